"""Response headers that keep browsers strict.

The pages load nothing but their own stylesheet and have no inline script or
style, so the Content-Security-Policy can allow 'self' and nothing else; an
injected ``<script>`` or ``style=`` would not run even if escaping ever failed.
The pages may not be framed (clickjacking) and forms may post only here.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.wrappers import Response

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


def install(app: Flask) -> None:
    """The web's own security policy: the headers (sessions, their cookie and throttling are logonmesh's)."""
    app.after_request(add_headers)
