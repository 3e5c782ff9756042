"""Login throttling, per username and per client address, counted by the whole cluster.

The counts live in the daemons (ops ``failures_count``, ``failures_add`` and
``failures_reset``), which sum every node's failures for a subject, so an
attacker gains nothing by spreading guesses over nodes.  The client address
is waitress's REMOTE_ADDR, the peer of the TCP connection: a header such as
X-Forwarded-For is written by the client and is never trusted here.

A check and the failure it may add are two calls, so under concurrency a few
attempts in flight (at most one per waitress thread per node) can pass the
limit; the limit slows guessing down by orders of magnitude, which is its job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from flask import request

from logonmesh.flask.errors import TooManyAttempts

USERNAME_MAX = 64   # longer names cannot sign up (the demo's form and register() say so)

Call = Callable[..., Any]


@dataclass(frozen=True)
class Limits:
    """Failures allowed per window before a login attempt is refused with 429."""

    per_user: int
    per_addr: int
    window_s: int


def user_subject(username: str) -> str:
    """A username that cannot exist (too long for sign-up) is hashed, so its subject stays short.

    The daemon ignores subjects over 200 characters; without the hash a long
    username would escape its per-username count.
    """
    if len(username) <= USERNAME_MAX:
        return f"user:{username}"
    digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
    return f"user#{digest}"


def addr_subject() -> str:
    return f"addr:{request.remote_addr or 'unknown'}"


def check(call: Call, limits: Limits, username: str) -> None:
    """Raise TooManyAttempts (429, with Retry-After) when the username or the address is over its limit.

    Runs before the password is checked, so a locked-out guess costs no
    scrypt and tells nothing, even when the password is right.
    """
    counts = call("failures_count", subjects=[user_subject(username), addr_subject()])
    waits = [c["retry_after_s"] for subject, c in counts.items()
             if c["n"] >= (limits.per_addr if subject.startswith("addr:") else limits.per_user)]
    if waits:
        raise TooManyAttempts(max(1, *waits))


def failed(call: Call, limits: Limits, username: str) -> None:
    """Count one failed login against both the username and the address, on this node's key."""
    call("failures_add", subjects=[user_subject(username), addr_subject()], window_s=limits.window_s)


def succeeded(call: Call, username: str) -> None:
    """A right password clears the username's count everywhere; the address keeps its count."""
    call("failures_reset", subjects=[user_subject(username)])
