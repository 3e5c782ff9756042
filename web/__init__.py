"""The web front end of one logonmesh node: a Flask app that talks only to its own daemon.

Every node of a cluster derives the same Flask secret from the cluster cookie,
so a browser's session cookie (which ignores the port) and its CSRF tokens are
accepted by every node alike.  Users and sessions live in the daemons; the web
keeps nothing but what the signed session cookie carries.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from logonmesh.daemon.client import DaemonClient
from logonmesh.daemon.config import Settings, load, resolve_cookie
from logonmesh.web import security
from logonmesh.web.link import DaemonLink
from logonmesh.web.mirror import SessionMirror

MAX_BODY_BYTES = 64 * 1024
DAEMON_TIMEOUT_MS = 1000  # one slow daemon call must leave room for a 503 within 2 s
SECRET_CONTEXT = b"logonmesh/web/v1"

csrf = CSRFProtect()


def derive_secret_key(cookie: bytes) -> bytes:
    """A key only for Flask, derived so that a leaked web key does not reveal the wire key."""
    return hmac.new(cookie, SECRET_CONTEXT, hashlib.sha256).digest()


def mirror_staleness(settings: Settings) -> float:
    """Trust the session mirror for a heartbeat and a half past the last tick (the daemon ticks each beat).

    That bounds how long a frozen daemon can leave a logout elsewhere unseen,
    and stays under the 2 s in which a dead daemon must turn into a 503; the
    floor of 0.5 s keeps a busy machine's late tick from untrusting the mirror.
    """
    return min(max(1.5 * settings.heartbeat_ms / 1000 + 0.1, 0.5), 1.8)


def create_app(settings: Settings | None = None, client: DaemonClient | None = None) -> Flask:
    """Build the app for one node; `client` lets a caller share or fake the daemon connection.

    With no settings (``logonmesh web --app logonmesh.web:create_app``, or any
    Flask tool) they come from the LOGONMESH_* environment, as the CLI reads it.
    """
    settings = settings or load(require_name=True)
    cookie = resolve_cookie(settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=derive_secret_key(cookie),
        SESSION_COOKIE_NAME="logonmesh",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        LOGONMESH_NODE=settings.require_name(),
    )
    client = client or DaemonClient(settings.ipc_path, cookie, name=f"web-{settings.name}",
                                    timeout_ms=DAEMON_TIMEOUT_MS)
    app.extensions["logonmesh.daemon"] = DaemonLink(client)
    app.extensions["logonmesh.mirror"] = SessionMirror(
        settings.feed_path, settings.ipc_path, cookie, client,
        stale_after_s=mirror_staleness(settings), step_threshold_ms=settings.max_clock_offset_ms)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    csrf.init_app(app)
    security.install(app, settings)
    _register(app)
    return app


def _register(app: Flask) -> None:
    """Blueprints are imported here so that importing `web` alone stays cheap."""
    from logonmesh.web import auth, errors, pages
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    errors.register(app)
