"""What the signed Flask session may hold: the daemon's session token, how much of that session's
lifetime was left at login and when last seen (for the web's lifetimes), and a local return path.

(Flask-WTF adds its CSRF state itself.)  The session cookie is shared by every
node, so nothing node-specific belongs in it, and nothing a user could use to
leave the site: a return path is kept and followed only if it is local.

No clock reading goes into the cookie.  Nodes' clocks may disagree by minutes,
so a unix time written by one node means nothing to another.  What every node
agrees on is the daemon session's expiry: each daemon and mirror holds it in
its own node's clock frame, and it denotes the same real instant everywhere.
So the cookie keeps *remaining lifetimes* (expiry minus now, on the node that
wrote them), and any node measures the real time elapsed since then as that
remaining lifetime minus the one it sees now on its own clock.
"""

from __future__ import annotations

import time
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from flask import current_app, request, session

from logonmesh.web.mirror import UNKNOWN
from logonmesh.web.node import daemon, mirror

TOKEN = "token"
RETURN_PATH = "next"
LEFT_AT_LOGIN = "login_left_ms"  # ms the daemon session had left at login: the absolute lifetime counts from here
LEFT_WHEN_SEEN = "seen_left_ms"  # ms it had left at the last refresh: the idle lifetime counts from here
LIFETIMES = "LOGONMESH_SESSION_LIFETIMES"  # app.config: (idle_s, absolute_s)
CSRF_SECRET = "csrf_token"  # Flask-WTF's per-session secret, which every CSRF token is bound to


def now_ms() -> float:
    """This node's clock, the frame its daemon's and mirror's expiries are in (the one seam tests move)."""
    return time.time() * 1000


def is_local_path(target: str | None) -> bool:
    """True only for a path on this site: '/x', never '//host', '/\\host' or 'scheme:…'.

    Browsers treat a backslash like a slash and drop tabs and newlines from a
    URL, so any of those, or any other control character, disqualifies it.
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    if "\\" in target or not target.isprintable():
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def remember_return_path(target: str | None) -> None:
    if is_local_path(target):
        session[RETURN_PATH] = target


def pop_return_path() -> str | None:
    """The remembered path, checked again on the way out in case an older cookie holds a bad one."""
    target = session.pop(RETURN_PATH, None)
    return target if is_local_path(target) else None


def requested_path() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def current_session() -> dict[str, Any] | None:
    """The live session behind the cookie's token, within the web's lifetimes, else None.

    The token is looked up once: in the mirror when it is current, else in the
    daemon.  The mirror is kept exact by the daemon's feed, so a logout
    anywhere counts here as soon as it reaches this node's daemon, with no
    round trip per page; the same answer's expiry then serves the lifetimes.
    """
    token = session.get(TOKEN)
    if token is None:
        return None
    if not isinstance(token, str):  # no version of this app writes that: forget it, ask nobody
        session.pop(TOKEN, None)
        return None
    found = mirror().lookup(token)
    if found is UNKNOWN:
        found = daemon().call("session_resolve", token=token)
    if found is None:
        session.pop(TOKEN, None)
        return None
    return found if enforce_lifetimes(found) else None


def start_session(username: str) -> None:
    """A fresh daemon token on every login; the one it replaces is revoked so it cannot be replayed.

    The CSRF secret is renewed too, so no form token from before the login (one
    an attacker may have obtained with a cookie they planted) is accepted after it.
    """
    old = session.get(TOKEN)
    created = daemon().call("session_create", username=username)
    session[TOKEN] = created["token"]
    session[LEFT_AT_LOGIN] = session[LEFT_WHEN_SEEN] = _left_ms(created["expires"])
    session.pop(CSRF_SECRET, None)
    if old and old != created["token"]:
        revoke(old)


def revoke(token: str) -> None:
    """Revoke everywhere, and tell the local mirror at once so this node never serves it again."""
    revoked = daemon().call("session_revoke", token=token)
    mirror().revoked(token, revoked["expires"])


def end_session() -> None:
    """Revoke first: if the daemon is down this raises, and the cookie keeps its token for a retry."""
    token = session.get(TOKEN)
    if token:
        revoke(token)
    for key in (TOKEN, RETURN_PATH, LEFT_AT_LOGIN, LEFT_WHEN_SEEN):
        session.pop(key, None)


def enforce_lifetimes(found: dict[str, Any]) -> bool:
    """Whether the session just looked up is within its idle and absolute lifetimes; if not, end it.

    ``found["expires"]`` is in this node's clock frame and the cookie's
    remaining lifetimes were measured in the writing node's frame, so their
    differences are real elapsed time whatever either clock says.  The
    daemon's expiry (session_ttl_s) is the first line for the absolute
    lifetime and this is the second; the idle lifetime is the web's alone.
    Ending revokes the token everywhere, so a copy of the cookie taken before
    is dead as well.  A cookie without both remaining lifetimes predates them
    and is treated as expired.
    """
    idle_s, absolute_s = current_app.config[LIFETIMES]
    at_login, when_seen = session.get(LEFT_AT_LOGIN), session.get(LEFT_WHEN_SEEN)
    left = _left_ms(found["expires"])
    if (not (_is_ms(at_login) and _is_ms(when_seen))
            or when_seen - left > idle_s * 1000 or at_login - left > absolute_s * 1000):
        end_session()
        return False
    if when_seen - left >= _refresh_every(idle_s) * 1000:
        session[LEFT_WHEN_SEEN] = left
    return True


def _left_ms(expires_ms: float) -> int:
    """How long the daemon session has left, by this node's clock (its expiry is in this node's frame)."""
    return int(expires_ms - now_ms())


def _refresh_every(idle_s: int) -> int:
    """How stale the last-seen remaining lifetime may get before the cookie is signed again.

    Re-signing the cookie costs a page about as much as the rest of its session
    check, so it is refreshed only every tenth of the idle lifetime (at most a
    minute): the idle limit then holds to within that much.
    """
    return max(1, min(60, idle_s // 10))


def _is_ms(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
