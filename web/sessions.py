"""What the signed Flask session may hold: the daemon's session token, when the session began and
was last used (for its lifetimes), and a local return path.

(Flask-WTF adds its CSRF state itself.)  The session cookie is shared by every
node, so nothing node-specific belongs in it, and nothing a user could use to
leave the site: a return path is kept and followed only if it is local.
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
LOGGED_IN_AT = "login_at"   # unix seconds of the login: the absolute lifetime counts from here
LAST_SEEN = "seen"          # unix seconds of the last request: the idle lifetime counts from here
LIFETIMES = "LOGONMESH_SESSION_LIFETIMES"  # app.config: (idle_s, absolute_s)


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
    """The session behind the cookie's token: from the mirror when it is current, else from the daemon.

    The mirror is kept exact by the daemon's feed, so a logout anywhere counts
    here as soon as it reaches this node's daemon, with no round trip per page.
    """
    token = session.get(TOKEN)
    if not token:
        return None
    found = mirror().lookup(token)
    if found is UNKNOWN:
        found = daemon().call("session_resolve", token=token)
    if found is None:
        session.pop(TOKEN, None)
    return found


def start_session(username: str) -> None:
    """A fresh daemon token on every login; the one it replaces is revoked so it cannot be replayed."""
    old = session.get(TOKEN)
    created = daemon().call("session_create", username=username)
    session[TOKEN] = created["token"]
    session[LOGGED_IN_AT] = session[LAST_SEEN] = int(time.time())
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
    session.pop(TOKEN, None)
    session.pop(RETURN_PATH, None)
    session.pop(LOGGED_IN_AT, None)
    session.pop(LAST_SEEN, None)


def enforce_lifetimes() -> None:
    """before_request: end a session that was idle too long or is older than its absolute lifetime.

    The timestamps ride in the signed cookie, so every node applies the same
    rule without a round trip.  The daemon's expiry (session_ttl_s) is the
    first line for the absolute lifetime and this is the second; the idle
    lifetime is the web's alone.  Ending revokes the token everywhere, so a
    copy of the cookie taken before is dead as well.
    """
    token = session.get(TOKEN)
    if token is None:
        return
    if not isinstance(token, str):  # no version of this app writes that: forget it, ask nobody
        session.pop(TOKEN, None)
        return
    now = int(time.time())
    if _expired(now):
        end_session()
    elif now - session.get(LAST_SEEN, 0) >= _refresh_every(current_app.config[LIFETIMES][0]):
        session[LAST_SEEN] = now


def _refresh_every(idle_s: int) -> int:
    """How stale the last-seen stamp may get before the cookie is signed again.

    Re-signing the cookie costs a page about as much as the rest of its session
    check, so it is refreshed only every tenth of the idle lifetime (at most a
    minute): the idle limit then holds to within that much.
    """
    return max(1, min(60, idle_s // 10))


def _expired(now: int) -> bool:
    """A cookie without both timestamps predates them, and is treated as expired."""
    idle_s, absolute_s = current_app.config[LIFETIMES]
    seen, since = session.get(LAST_SEEN), session.get(LOGGED_IN_AT)
    if not (_is_stamp(seen) and _is_stamp(since)):
        return True
    return now - seen > idle_s or now - since > absolute_s


def _is_stamp(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
