"""Response headers that keep browsers strict, and session cookies that are Secure when they should be.

The pages load nothing but their own stylesheet and have no inline script or
style, so the Content-Security-Policy can allow 'self' and nothing else; an
injected ``<script>`` or ``style=`` would not run even if escaping ever failed.
The pages may not be framed (clickjacking) and forms may post only here.
"""

from __future__ import annotations

from flask import Flask, Request, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature
from werkzeug.wrappers import Response

from logonmesh.daemon.config import Settings

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "style-src 'self'",
    "img-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
])

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

HSTS = "max-age=31536000"  # only ever sent over https: a browser ignores it on http anyway


def add_headers(response: Response) -> Response:
    """after_request: every response, error pages and static files included, gets the same headers."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure per request rather than once per app, and read
    without judging its age by the signer's clock.

    The cookie is Secure whenever this request came over https (the WSGI
    url_scheme), and always when SESSION_COOKIE_SECURE (the ``secure_cookies``
    setting) is on: behind a TLS proxy that talks plain http to waitress, only
    the setting can know that the browser used https.

    Flask opens the cookie with ``loads(value, max_age=...)``, which compares
    the signature's timestamp, written by whichever node signed it, with this
    node's clock, and refuses a negative age: a node whose clock is behind the
    signer's would log everyone out.  Here the signature is still checked (a
    forged or altered cookie is an empty session) but its timestamp is not;
    the session's lifetimes are kept by ``web.sessions``, from the daemon
    session's expiry, which every node agrees on.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        try:
            return self.session_class(serializer.loads(value))
        except BadSignature:
            return self.session_class()


def install(app: Flask, settings: Settings) -> None:
    """The web's whole security policy, set in one place: cookies, headers, session lifetimes, throttling."""
    from logonmesh.web import sessions, throttle  # they import the views' helpers; keep `import web` cheap
    app.config.update({
        "SESSION_COOKIE_SECURE": settings.secure_cookies,
        sessions.LIFETIMES: (settings.session_idle_s, settings.session_ttl_s),
        # A CSRF token's timestamp is the signing node's clock, and Flask-WTF refuses one whose age is negative
        # here, so none is judged by it: the token is bound to the session's own secret, renewed at each login.
        "WTF_CSRF_TIME_LIMIT": None,
        throttle.CONFIG_KEY: throttle.Limits(settings.throttle_user, settings.throttle_addr,
                                             settings.throttle_window_s),
    })
    app.session_interface = SessionInterface()  # the lifetimes are checked where the session is looked up
    app.after_request(add_headers)
