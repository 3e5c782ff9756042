"""``LogonMesh``: cluster-wide logins and replicated server-side sessions for any Flask app.

``LogonMesh(app)`` (or ``mesh = LogonMesh(); mesh.init_app(app)``) reads the
node's settings from the one settings table (the ``LOGONMESH_*`` names, in
``app.config`` or the environment), connects to the node's own daemon over
ipc, starts the session mirror and installs the mesh as ``flask.session``.
It adds no route, template, error page or CSRF: the app chooses.  Its state
lives in ``app.extensions["logonmesh"]``, as Flask's conventions ask, so one
``LogonMesh`` object may serve several apps.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Flask, current_app, session
from werkzeug.security import check_password_hash, generate_password_hash

from logonmesh.daemon.client import DaemonClient
from logonmesh.flask import login, throttle
from logonmesh.flask.errors import MeshUnavailable, Refused, TooManyAttempts
from logonmesh.flask.records import Records
from logonmesh.flask.session import MeshSessionInterface
from logonmesh.flask.sessions import session_revoked
from logonmesh.flask.state import EXTENSION, MeshState, derive_key, settings_for
from logonmesh.flask.users import MeshUser, current_user, forget_user

USERNAME_MAX = throttle.USERNAME_MAX


class LogonMesh:
    """The extension: register, log in and out, records, and a look at the cluster, for the current app."""

    def __init__(self, app: Flask | None = None, *, login_view: str = "/") -> None:
        self.login_view = login_view  # a path, or an endpoint for url_for: where @login_required sends people
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, client: DaemonClient | None = None) -> None:
        """Set the app up for this node (``client`` lets a test share or fake the daemon connection)."""
        state = MeshState(settings_for(app), client)
        app.extensions[EXTENSION] = state
        app.extensions[EXTENSION + ".ext"] = self
        # Flask's defaults, unless the app chose otherwise: our cookie's name, Lax, Secure when told
        if app.config.get("SESSION_COOKIE_NAME") in (None, "session"):
            app.config["SESSION_COOKIE_NAME"] = "logonmesh"
        if app.config.get("SESSION_COOKIE_SAMESITE") is None:
            app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        app.config["SESSION_COOKIE_SECURE"] = bool(app.config.get("SESSION_COOKIE_SECURE")) or \
            state.settings.secure_cookies
        if not app.config.get("SECRET_KEY"):  # the same on every node, so CSRF tokens and flashes travel
            app.config["SECRET_KEY"] = derive_key(state.cookie_key, b"logonmesh/app-secret/v1")
        app.session_interface = MeshSessionInterface()
        state.peers.sender = app
        app.before_request(state.peers.start)  # the peer signals follow from the first request on

    @staticmethod
    def _state() -> MeshState:
        return current_app.extensions[EXTENSION]

    # ---- the node -------------------------------------------------------

    @property
    def node(self) -> str:
        """This node's name."""
        return self._state().node

    def start(self) -> None:
        """Warm the session mirror now (``logonmesh web`` does it before serving); else the first request does."""
        self._state().start()

    def peers(self) -> dict[str, Any]:
        """What ``logonmesh peers --json`` shows: this node's view of every peer (up, offsets, heartbeats)."""
        return self._state().call("peers")

    def ping(self, timeout_ms: int = 500) -> list[str]:
        """The peers this node's daemon sees up; raises MeshUnavailable when the daemon does not answer."""
        return list(self._state().call("ping", timeout_ms=timeout_ms)["peers_up"])

    # ---- people ---------------------------------------------------------

    def register(self, username: str, password: str) -> None:
        """Create a user, cluster-wide.  The hash is computed here, in this request's thread, never in the daemon.

        Raises UsernameTaken, Refused (a username of 1 to 64 printable
        characters), or MeshUnavailable when the daemon or the store is out.
        """
        if not (0 < len(username) <= USERNAME_MAX and username.isprintable()):
            raise Refused(f"a username has 1 to {USERNAME_MAX} printable characters")
        self._state().call("register", username=username, password_hash=generate_password_hash(password))

    def login(self, username: str, password: str) -> bool:
        """Check the password under the cluster-wide throttle; on success start a fresh session (new id, new token).

        Raises TooManyAttempts (429 with Retry-After, unless the app handles
        it) before any hash is computed, so a locked-out guess learns nothing.
        """
        state = self._state()
        try:
            throttle.check(state.call, state.limits, username)
        except TooManyAttempts:
            state.logins.add("throttled")
            raise
        if not self._password_ok(state, username, password):
            state.logins.add("failure")
            throttle.failed(state.call, state.limits, username)
            return False
        throttle.succeeded(state.call, username)
        login.start_login(state, username)
        state.logins.add("success")
        forget_user()
        return True

    def logout(self) -> None:
        """End the current session on every node: the token is revoked and the session data destroyed."""
        user = self.user()
        login.end_login(self._state(), user.username if user is not None else None)
        forget_user()

    # ---- a person's sessions, on every node ------------------------------

    def sessions(self, username: str) -> list[dict[str, Any]]:
        """The user's live sessions on the cluster, oldest first, as this node's daemon knows them.

        Each is ``{id, node, created_at, last_seen, device, expires, current}``:
        ``id`` is a public id (not the token, and useless as one), ``current``
        says whether it is this request's own login.
        """
        mine = login.current_session_id()
        return [{**found, "current": found["id"] == mine}
                for found in self._state().call("sessions_of", username=username)]

    def current_session_id(self) -> str | None:
        """The public id of this request's own login, or None."""
        return login.current_session_id()

    def revoke(self, username: str, session_id: str | None = None, *, keep_current: bool = False) -> list[str]:
        """End one of the user's sessions (by its public id), or with None all of them, on every node.

        With ``session_id=None`` the current request's own session ends too,
        unless ``keep_current`` (the "log out my other devices" button).
        Outside a request (a script with an app context) there is no current session.
        Returns the public ids it revoked, and sends ``session_revoked`` when there were any.
        """
        state, mine = self._state(), login.current_session_id()
        if session_id is not None:
            ended = state.call("session_revoke_id", username=username, id=session_id)["ids"]
        else:
            ended = state.call("session_revoke_all", username=username, keep=mine if keep_current else None)["ids"]
        if mine is not None and mine in ended:  # this request is logged out too, at once
            session.clear()
            forget_user()
        if ended:
            session_revoked.send(login.app(), username=username, session_ids=ended)
        return list(ended)

    def user(self) -> MeshUser | None:
        """The logged-in user of this request, or None (what ``current_user`` proxies, for Flask-Login)."""
        user = current_user._get_current_object()
        return user if isinstance(user, MeshUser) else None

    def remember_return_path(self, target: str | None) -> None:
        """Keep where to go after the login (a login page's ``?next=``), if it is a path on this site."""
        login.remember_return_path(target)

    def return_path(self, default: str = "/") -> str:
        """Where ``@login_required`` was sending the person before the login: a local path, else ``default``."""
        return login.pop_return_path() or default

    @staticmethod
    def _password_ok(state: MeshState, username: str, password: str) -> bool:
        """An unknown user still costs one hash check, so timing does not tell which usernames exist."""
        user = state.call("user", username=username)
        if user is None:
            check_password_hash(_decoy_hash(), password)
            return False
        return check_password_hash(user["password_hash"], password)

    # ---- the app's own data ---------------------------------------------

    def records(self, namespace: str) -> Records:
        """The app's replicated records in a namespace: put, get, delete, items."""
        return Records(self._state(), namespace)


@cache
def _decoy_hash() -> str:
    return generate_password_hash("logonmesh decoy password")


__all__ = ["LogonMesh", "MeshUnavailable"]
