"""Who is logged in: the daemon's session token in ``flask.session``, and the lifetimes that end it.

The token is looked up once per request: in the mirror when it is current,
else in the daemon.  The mirror is kept exact by the daemon's feed, so a
logout anywhere counts here as soon as it reaches this node's daemon, with no
round trip per page; the same answer's expiry serves the lifetimes.

The lifetimes are measured against the daemon session's expiry, which every
node knows in its own clock (the daemons rebase expiries by each peer's
measured offset): what is stored is how long it had left at login and when
last seen, so their differences are real elapsed time whatever any clock says.

The login's remaining lifetime is written into the session once, at login.
The last-seen one changes with activity, so it lives beside the session, in
an entry of its own (the session id plus ``-t``): refreshing it never writes
the session, and a request that only reads the session can never overwrite a
newer write made on another node (whole-session last-writer-wins would lose
it).  It is refreshed every tenth of the idle lifetime (at most a minute), so
the idle limit holds to within that much.
"""

from __future__ import annotations

import time
from typing import Any, TypeGuard

import msgpack
from urllib.parse import urlsplit

from flask import Flask, current_app, has_request_context, request, session

from logonmesh.daemon.kinds import session_id
from logonmesh.flask.errors import MeshUnavailable
from logonmesh.flask.mirror import UNKNOWN
from logonmesh.flask.sessions import device_of, session_ended, session_started
from logonmesh.flask.state import MeshState

TOKEN = "_lm_token"                # the daemon's session token
LEFT_AT_LOGIN = "_lm_login_left"   # ms the daemon session had left at login: the absolute lifetime counts from it
RETURN_PATH = "_lm_next"           # where to go after the login, a local path only
RESERVED = (TOKEN, LEFT_AT_LOGIN, RETURN_PATH)
SEEN_SUFFIX = "-t"                 # the last-seen entry's key: the session id and this


def app() -> Flask:
    """The app itself, not the proxy: blinker keys receivers by the sender object."""
    return current_app._get_current_object()  # type: ignore[attr-defined]


def now_ms() -> float:
    """The one place the web reads the wall clock (a test's seam)."""
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
    """The remembered path, checked again on the way out."""
    target = session.pop(RETURN_PATH, None)
    return target if is_local_path(target) else None


def requested_path() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def current_login(state: MeshState) -> dict[str, Any] | None:
    """``{user, uid, expires}`` of the live login behind this session, within its lifetimes, else None.

    Raises MeshUnavailable when the cookie names a session the daemon could
    not be asked about: who this is cannot be known, which is not "nobody".
    """
    if not getattr(session, "reachable", True):
        raise MeshUnavailable(f"the daemon of node {state.node} is not answering")
    token = session.get(TOKEN)
    if token is None:
        return None
    if not isinstance(token, str):  # nothing of ours writes that: forget it, ask nobody
        session.pop(TOKEN, None)
        return None
    found = state.mirror.lookup(token)
    if found is UNKNOWN:
        found = state.call("session_resolve", token=token)
    if found is None:
        session.pop(TOKEN, None)
        return None
    return found if _within_lifetimes(state, found) else None


def start_login(state: MeshState, username: str) -> None:
    """A fresh daemon token and a fresh session id on every login; what they replace is destroyed.

    The session's other contents (a CSRF secret among them) are dropped too,
    so nothing planted before the login (session fixation) survives it.
    """
    old, going_to = session.get(TOKEN), session.get(RETURN_PATH)
    created = state.call("session_create", username=username, device=device_of(request.headers.get("User-Agent")))
    session.clear()
    if going_to is not None:
        session[RETURN_PATH] = going_to
    regenerate = getattr(session, "regenerate", None)
    if regenerate is not None:
        regenerate()
    session[TOKEN] = created["token"]
    session[LEFT_AT_LOGIN] = left = _left_ms(created["expires"])
    _save_seen(state, left)
    if isinstance(old, str) and old != created["token"]:
        revoke(state, old)
    session_started.send(app(), username=username, session_id=session_id(created["token"]))


def current_session_id() -> str | None:
    """The public id of this request's login (what ``mesh.sessions`` lists), or None when nobody is logged in."""
    token = session.get(TOKEN) if has_request_context() else None
    return session_id(token) if isinstance(token, str) else None


def revoke(state: MeshState, token: str) -> None:
    """Revoke everywhere, and tell the local mirror at once so this node never serves it again."""
    revoked = state.call("session_revoke", token=token)
    state.mirror.revoked(token, revoked["expires"])


def end_login(state: MeshState, username: str | None = None) -> None:
    """Revoke first (if the daemon is down this raises, and the session keeps its token for a retry), then
    empty the session, which destroys its data on every node when the request ends.

    ``session_ended`` is sent for a logout and for a login that outlived its idle or absolute lifetime.
    """
    token = session.get(TOKEN)
    if isinstance(token, str):
        revoke(state, token)
        session_ended.send(app(), username=username, session_id=session_id(token))
    session.clear()  # saving an emptied session destroys it, and its last-seen entry, everywhere


def _within_lifetimes(state: MeshState, found: dict[str, Any]) -> bool:
    """Whether the login just looked up is within its idle and absolute lifetimes; if not, end it."""
    at_login, when_seen = session.get(LEFT_AT_LOGIN), _load_seen(state)
    left = _left_ms(found["expires"])
    if (not (_is_ms(at_login) and _is_ms(when_seen))
            or when_seen - left > state.idle_s * 1000 or at_login - left > state.absolute_s * 1000):
        end_login(state, found["user"])
        return False
    if when_seen - left >= refresh_every(state.idle_s) * 1000:
        _save_seen(state, left)
        state.call("session_touch", token=session[TOKEN])  # what `sessions` shows as last used
    return True


def _sid() -> str | None:
    sid = getattr(session, "sid", None)
    return sid if isinstance(sid, str) else None


def _load_seen(state: MeshState) -> Any:
    """The last-seen remaining lifetime, from the mirror (the daemon when the mirror cannot vouch), or None."""
    sid = _sid()
    if sid is None:
        return None
    data = state.mirror.session_data(sid + SEEN_SUFFIX)
    if data is UNKNOWN:
        found = state.call("session_data_get", sid=sid + SEEN_SUFFIX)
        data = None if found is None else found["data"]
    return None if data is None else msgpack.unpackb(data)


def _save_seen(state: MeshState, left: int) -> None:
    """Write the last-seen entry now (not at the end of the request): it never touches the session itself."""
    sid = _sid()
    if sid is None:
        return
    data = msgpack.packb(left)
    written = state.call("session_data_put", sid=sid + SEEN_SUFFIX, data=data,
                         ttl_s=state.idle_s + refresh_every(state.idle_s) + 60)
    state.mirror.session_data_written(sid + SEEN_SUFFIX, written, data)


def _left_ms(expires_ms: float) -> int:
    """How long the daemon session has left, by this node's clock (its expiry is in this node's frame)."""
    return int(expires_ms - now_ms())


def refresh_every(idle_s: int) -> int:
    """How stale the idle stamp may get before its entry is written again: a tenth of the idle lifetime, ≤ 60 s."""
    return max(1, min(60, idle_s // 10))


def _is_ms(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
