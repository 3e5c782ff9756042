"""``flask.session`` kept in the mesh: the cookie holds only a signed, opaque session id.

A session's data is one entry of kind ``d`` (session data) in every daemon,
written through this node's daemon when a request changed it and read from
this web's mirror, so reading a session costs no round trip and no database.
The daemon is asked only when the mirror cannot vouch (not current, or a
session written elsewhere an instant ago that has not arrived here yet).

Semantics, as docs/flask.md states them:

- **Whole-session last-writer-wins.**  A save replaces the whole session
  everywhere.  Two concurrent requests that both change the same session:
  the later save wins and the other change is lost (Flask-Session's lost
  update).  Only a request that changed the session saves it, so requests
  that merely read never overwrite anything.  Keep counters and anything
  edited concurrently in ``mesh.records``.
- **A size limit.**  At most ``SESSION_DATA_MAX`` bytes packed; more raises
  ``SessionTooLarge`` when the request ends.
- **Lifetime.**  A login's session lives as long as the login may; a visitor's
  ``--session-idle`` (and a little more) from its last save; a login
  moves it to a fresh id and destroys the old one; a logout destroys it on
  every node, and a destroyed id never comes back (a tombstone beats it).
- The cookie's signature has no timestamp: lifetimes are judged server-side,
  by expiries every node knows in its own clock, not by another node's clock.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgpack
from flask import Flask, Request, Response, request
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer
from werkzeug.datastructures import CallbackDict

from logonmesh.daemon.kinds import SESSION_DATA_MAX
from logonmesh.flask.errors import MeshUnavailable, Refused, SessionTooLarge
from logonmesh.flask.login import SEEN_SUFFIX, TOKEN, refresh_every
from logonmesh.flask.mirror import UNKNOWN
from logonmesh.flask.state import EXTENSION, MeshState

SID_BYTES = 32
SIGNER_SALT = b"logonmesh/session-id"


def data_ttl_s(state: MeshState, session: "MeshSession") -> int:
    """How long a session's data outlives its last save.

    A login's session is saved rarely (activity moves its last-seen entry,
    not the session), so it lives as long as the login may (the absolute
    lifetime) and the idle check ends it.  A session without a login (a
    visitor's CSRF secret) lives the idle lifetime, plus the refresh period
    and a minute: visitors cannot fill every node's memory for a day.
    """
    if TOKEN in session:
        return state.absolute_s + 60
    return state.idle_s + refresh_every(state.idle_s) + 60


def new_sid() -> str:
    return secrets.token_urlsafe(SID_BYTES)


class MeshSession(CallbackDict, SessionMixin):
    """A session dict that knows its id, and whether the mesh could be asked for it at all."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None, new: bool = False,
                 reachable: bool = True) -> None:
        def changed(session: "MeshSession") -> None:
            session.modified = True
            session.accessed = True
            session.check_size()
        super().__init__(initial, changed)
        self.sid = sid or new_sid()
        self.new = new
        self.modified = False
        self.reachable = reachable      # False: the daemon could not be asked; nothing is saved
        self.destroyed: list[str] = []  # ids to destroy everywhere at save (a logout, or a login's old id)

    def check_size(self) -> None:
        """Refuse, in the view that set it (so the app's handler or a 413 answers), a session over the limit.

        The value stays out of the mesh: the session is not saved.  (A nested
        change, ``session["list"].append(…)``, is only seen when the request
        ends; over the limit then, it is refused with a 500 and logged.)
        """
        size = _packed_size(self)
        if size > SESSION_DATA_MAX:
            self.reachable = False  # nothing of this request's session is saved
            raise SessionTooLarge(_too_large(size))

    def regenerate(self) -> None:
        """A fresh id for the same data (a login): the old id's data is destroyed when the request ends."""
        if not self.new:
            self.destroyed.append(self.sid)
        self.sid, self.new, self.modified = new_sid(), True, True


def _packed_size(session: "MeshSession") -> int:
    try:
        return len(msgpack.packb(dict(session), use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return 0  # refused at save, with its own message


def _too_large(size: int) -> str:
    return (f"flask.session holds {size} bytes packed; a logonmesh session holds at most {SESSION_DATA_MAX}. "
            "Keep bulky data in mesh.records.")


class MeshSessionInterface(SessionInterface):
    """Flask's session interface, backed by the mesh (installed by ``LogonMesh.init_app``)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure on an https request, and always with SESSION_COOKIE_SECURE (behind a TLS proxy only it knows)."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def _signer(self, state: MeshState) -> Signer:
        return Signer(state.cookie_key, salt=SIGNER_SALT)

    def open_session(self, app: Flask, request: Request) -> MeshSession:
        state: MeshState = app.extensions[EXTENSION]
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw:
            return MeshSession(new=True)
        try:
            sid = self._signer(state).unsign(raw).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return MeshSession(new=True)  # tampered, or another cluster's: start afresh
        try:
            data = self._load(state, sid)
        except MeshUnavailable:
            return MeshSession(sid=sid, reachable=False)  # looks logged out; writes answer 503
        if data is None:
            return MeshSession(new=True)  # destroyed or expired: a new id, never the old one again
        return MeshSession(msgpack.unpackb(data, raw=False, strict_map_key=False), sid=sid)

    def _load(self, state: MeshState, sid: str) -> bytes | None:
        data = state.mirror.session_data(sid)
        if data is UNKNOWN:
            try:
                found = state.call("session_data_get", sid=sid)
            except Refused:
                return None  # not even a valid id
            data = None if found is None else found["data"]
        return data

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, MeshSession)
        state: MeshState = app.extensions[EXTENSION]
        for sid in session.destroyed:
            self._destroy(state, sid)
        if not session.reachable:
            return
        if not session:
            if not session.new and session.modified:  # emptied: gone everywhere, and so is the cookie
                self._destroy(state, session.sid)
                response.delete_cookie(self.get_cookie_name(app), domain=self.get_cookie_domain(app),
                                       path=self.get_cookie_path(app))
            return
        if session.modified:
            self._store(state, session)
        if session.modified or session.new or self.should_set_cookie(app, session):
            response.set_cookie(
                self.get_cookie_name(app), self._signer(state).sign(session.sid).decode("ascii"),
                expires=self.get_expiration_time(app, session), httponly=self.get_cookie_httponly(app),
                domain=self.get_cookie_domain(app), path=self.get_cookie_path(app),
                secure=self.get_cookie_secure(app), samesite=self.get_cookie_samesite(app))
            response.vary.add("Cookie")

    def _store(self, state: MeshState, session: MeshSession) -> None:
        try:
            data = msgpack.packb(dict(session), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise Refused(f"flask.session holds a value msgpack cannot carry ({exc})") from None
        if len(data) > SESSION_DATA_MAX:
            raise SessionTooLarge(_too_large(len(data)))
        written = state.call("session_data_put", sid=session.sid, data=data, ttl_s=data_ttl_s(state, session))
        state.mirror.session_data_written(session.sid, written, data)

    def _destroy(self, state: MeshState, sid: str) -> None:
        """The session and its last-seen entry, gone on every node (a tombstone beats any copy)."""
        for key in (sid, sid + SEEN_SUFFIX):
            destroyed = state.call("session_data_delete", sid=key)
            state.mirror.session_data_destroyed(key, destroyed["expires"])
