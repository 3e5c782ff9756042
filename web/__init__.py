"""The budget demo: a Flask app like any other, built only on ``logonmesh.flask``.

It signs people up and logs them in through ``LogonMesh``, keeps each
person's budget entries in ``mesh.records("budget")``, and shows the cluster
as the node's daemon sees it.  It imports nothing else of logonmesh (an
import-linter contract in setup.cfg says so), so whatever it does, an app of
yours can do the same way.  ``logonmesh web`` serves it by default:
``logonmesh web --app logonmesh.web:create_app``.
"""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from logonmesh.flask import LogonMesh, metrics_blueprint

MAX_BODY_BYTES = 64 * 1024

csrf = CSRFProtect()
mesh = LogonMesh(login_view="auth.login")


def create_app(config: Mapping[str, Any] | None = None, client: Any = None) -> Flask:
    """The app for this node: settings from the LOGONMESH_* environment, or from ``config`` (same names)."""
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        # the CSRF token is bound to the session's own secret, which a login renews: no clock needed
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.config.update(config or {})
    mesh.init_app(app, client)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    csrf.init_app(app)
    _register(app)
    return app


def _register(app: Flask) -> None:
    """Blueprints are imported here so that importing `web` alone stays cheap."""
    from logonmesh.web import auth, errors, pages, security, sessions
    security.install(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(metrics_blueprint())  # GET /metrics, for Prometheus (docs/operations.md)
    errors.register(app)
