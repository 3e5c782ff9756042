"""Every error is a page: a person sees what went wrong, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge, TooManyRequests

from logonmesh.flask import MeshError, MeshUnavailable, TooManyAttempts
from logonmesh.web import mesh

log = logging.getLogger(__name__)


def register(app: Flask) -> None:
    app.register_error_handler(CSRFError, csrf_failed)
    app.register_error_handler(MeshUnavailable, daemon_unavailable)
    app.register_error_handler(MeshError, daemon_refused)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(TooManyAttempts, too_many_attempts)  # before MeshError, which it also is
    app.register_error_handler(TooManyRequests, too_many_attempts)
    app.register_error_handler(InternalServerError, internal_error)
    app.register_error_handler(HTTPException, http_error)


def page(code: int, title: str, message: str) -> tuple[str, int]:
    return render_template("error.html", code=code, title=title, message=message), code


def csrf_failed(exc: CSRFError) -> tuple[str, int] | tuple[str, int, dict[str, str]]:
    """A form whose token cannot be checked because the session cannot be read (the daemon is out) is the
    daemon's failure, not the person's: say so with a 503."""
    try:
        mesh.ping(timeout_ms=300)
    except MeshUnavailable as down:
        return daemon_unavailable(down)
    return page(400, "The form could not be accepted",
                "It was missing its security token, or the token was stale. "
                "Go back, reload the page and try again.")


def daemon_unavailable(exc: MeshUnavailable) -> tuple[str, int, dict[str, str]]:
    log.warning("daemon unavailable: %s", exc)
    body, code = page(503, "This node is not available",
                      f"The daemon of node {mesh.node} is not answering, so this node cannot "
                      "check accounts or sessions right now. Try again in a moment, or use another node.")
    return body, code, {"Retry-After": "2"}


def daemon_refused(exc: MeshError) -> tuple[str, int]:
    log.warning("daemon refused a request (%s): %s", exc.error_code, exc.description)
    return page(503, "This node could not finish the request",
                f"The daemon of node {mesh.node} refused it: {exc.description}. Try again in a moment.")


def too_large(exc: RequestEntityTooLarge) -> tuple[str, int]:
    return page(413, "That was too much", "A request to this site may carry at most 64 KiB.")


def too_many_attempts(exc: TooManyRequests) -> tuple[str, int, dict[str, str]]:
    """Login throttling: the wait is in Retry-After, and said in words too."""
    wait = int(getattr(exc, "retry_after", None) or 60)
    body, code = page(429, "Too many failed logins",
                      f"Too many failed logins for this username or from this address. "
                      f"Try again in {wait} seconds.")
    return body, code, {"Retry-After": str(wait)}


def internal_error(exc: InternalServerError) -> tuple[str, int]:
    return page(500, "Something went wrong", "The error has been logged. Try again in a moment.")


def http_error(exc: HTTPException) -> tuple[str, int]:
    return page(exc.code or 500, exc.name, exc.description or "")
