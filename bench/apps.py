"""The baseline web apps of figure 2, each served by waitress in its own process with the web's settings.

    python -m bench.apps hello --port P
        a bare Flask hello-world.
    python -m bench.apps redis --port P --headers JSON
        the same /budget page (the real template, the real logout form with its
        CSRF token, the headers the real page sends, passed in as JSON) whose
        session lives server-side in Redis, the Flask-Session way: the cookie
        holds a session id and each request costs one Redis GET (and a SET only
        when the session changed).  ``seed_redis_session`` makes the session.
    python -m bench.apps roundtrip --port P   (LOGONMESH_* settings from the environment)
        the real web app, but with its session mirror replaced by one that always
        says "ask the daemon": one ipc round trip per request, the design the
        mirror replaced.  The web itself has no switch for this, so the bench
        swaps the extension object; web/ is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import secrets
import signal
import sys

from flask import Blueprint, Flask, redirect, render_template, url_for
from flask.sessions import SessionInterface, SessionMixin
from waitress.server import create_server
from werkzeug.datastructures import CallbackDict
from werkzeug.wrappers import Response

from logonmesh.commands.serve import THREADS

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "bench-session:"
REDIS_COOKIE = "session"
SECRET_KEY = b"bench-secret-key-bench-secret-key"


# ---- hello --------------------------------------------------------------------------------

def hello_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"
    return app


# ---- the Redis-session /budget ----------------------------------------------------------

class RedisSession(CallbackDict, SessionMixin):
    def __init__(self, initial: dict | None = None, sid: str | None = None, new: bool = False) -> None:
        def on_update(_: dict) -> None:
            self.modified = True
        super().__init__(initial, on_update)
        self.sid = sid or secrets.token_urlsafe(32)
        self.new = new
        self.modified = False


class RedisSessionInterface(SessionInterface):
    """Flask-Session's way, reduced to what a request needs: one GET to load, one SET only on change."""

    def __init__(self, client) -> None:
        self.redis = client

    def open_session(self, app: Flask, request) -> RedisSession:
        sid = request.cookies.get(REDIS_COOKIE)
        if sid:
            raw = self.redis.get(REDIS_PREFIX + sid)
            if raw is not None:
                return RedisSession(pickle.loads(raw), sid=sid)
        return RedisSession(new=True)

    def save_session(self, app: Flask, session: RedisSession, response: Response) -> None:
        if not session.modified:
            return
        self.redis.set(REDIS_PREFIX + session.sid, pickle.dumps(dict(session)), ex=86400)
        response.set_cookie(REDIS_COOKIE, session.sid, httponly=True, samesite="Lax")


def seed_redis_session(username: str) -> str:
    """A logged-in Redis session for `username` (with its CSRF secret, so rendering changes nothing)."""
    import redis
    sid = secrets.token_urlsafe(32)
    data = {"user": username, "csrf_token": secrets.token_hex(20)}
    redis.Redis.from_url(REDIS_URL).set(REDIS_PREFIX + sid, pickle.dumps(data), ex=3600)
    return sid


def redis_app(headers: dict[str, str]) -> Flask:
    import redis
    from flask import session
    from flask_wtf.csrf import CSRFProtect
    from logonmesh.web import present
    from logonmesh.web.forms import BudgetEntryForm, LogoutForm

    app = Flask(__name__, template_folder=os.path.join(WEB_DIR, "templates"),
                static_folder=os.path.join(WEB_DIR, "static"))
    app.config.update(SECRET_KEY=SECRET_KEY, LOGONMESH_NODE="bench")
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    app.session_interface = RedisSessionInterface(redis.Redis.from_url(REDIS_URL))
    CSRFProtect(app)
    auth = Blueprint("auth", __name__)  # the endpoints the template links to
    for rule, name in (("/", "login"), ("/signup", "signup"), ("/logout", "logout")):
        auth.add_url_rule(rule, name, lambda: "", methods=["GET", "POST"])
    pages = Blueprint("pages", __name__)

    @pages.get("/budget")
    def budget() -> Response:
        user = session.get("user")
        if user is None:
            return redirect(url_for("auth.login"))
        # the same template with the same variables as the real page (the bench user has no entries)
        page = render_template("budget.html", username=user, node="bench", form=LogoutForm(),
                               entry_form=BudgetEntryForm(), error=None, entries=[],
                               total=present.money(0), total_negative=False)
        response = Response(page, mimetype="text/html")
        for name, value in headers.items():
            response.headers[name] = value
        return response
    app.register_blueprint(auth)
    app.register_blueprint(pages)
    return app


# ---- the real app with a round trip per request --------------------------------------------

class AskTheDaemon:
    """A stand-in for logonmesh.flask.mirror.SessionMirror that never vouches: every lookup goes to the daemon."""

    def lookup(self, token: str):
        from logonmesh.flask.mirror import UNKNOWN
        return UNKNOWN

    def records(self, namespace: str, prefix: str = ""):
        from logonmesh.flask.mirror import UNKNOWN
        return UNKNOWN

    def session_data(self, sid: str):
        from logonmesh.flask.mirror import UNKNOWN
        return UNKNOWN

    def session_data_written(self, sid: str, reply: dict, data: bytes) -> None:
        pass

    def session_data_destroyed(self, sid: str, expires_ms: int) -> None:
        pass

    def record_written(self, written: dict) -> None:
        pass

    def revoked(self, token: str, expires_ms: int) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def roundtrip_app() -> Flask:
    from logonmesh.web import create_app
    app = create_app()
    state = app.extensions["logonmesh"]
    state.mirror.close()
    state.mirror = AskTheDaemon()
    return app


# ---- serving ------------------------------------------------------------------------------

def serve(app: Flask, port: int) -> None:
    server = create_server(app, host="127.0.0.1", port=port, threads=THREADS, ident="bench")

    def leave(*_) -> None:
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, leave)
    print("serving", flush=True)
    server.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["hello", "redis", "roundtrip"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--headers", default="{}", help="JSON: response headers of the real /budget page")
    args = ap.parse_args()
    if args.kind == "hello":
        app = hello_app()
    elif args.kind == "redis":
        app = redis_app(json.loads(args.headers))
    else:
        app = roundtrip_app()
    serve(app, args.port)


if __name__ == "__main__":
    sys.exit(main())
