"""The errors an app sees from logonmesh: each an HTTP answer by default, each with a stable ``error_code``.

An app that does not handle them still answers sensibly: a mesh that cannot
be reached is a 503, too many failed logins a 429 with ``Retry-After``.  The
``error_code`` is what to switch on (the daemon's error codes, docs/wire.md;
``code`` is the HTTP status, as werkzeug has it); the message is for people.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException, ServiceUnavailable, TooManyRequests


class MeshError(HTTPException):
    """Anything logonmesh refuses; ``error_code`` names why (never switch on the message)."""

    code = 500
    error_code = "internal"

    def __init__(self, description: str | None = None, error_code: str | None = None) -> None:
        super().__init__(description)
        if error_code is not None:
            self.error_code = error_code


class MeshUnavailable(MeshError, ServiceUnavailable):
    """This node's daemon, or the cluster's store, cannot be reached now: retry later (503)."""

    code = 503
    error_code = "unavailable"
    description = "This node cannot reach its logonmesh daemon or the user store right now. Try again in a moment."


class UsernameTaken(MeshError):
    """``register``: the username exists somewhere in the cluster (409)."""

    code = 409
    error_code = "taken"
    description = "That username is taken."


class TooManyAttempts(MeshError, TooManyRequests):
    """``login``: too many failed logins for this username or address, cluster-wide (429, with Retry-After)."""

    code = 429
    error_code = "throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed logins. Try again in {retry_after} s.")
        self.retry_after = retry_after  # werkzeug's TooManyRequests sends it as the Retry-After header


class Refused(MeshError):
    """A record or a session the mesh will not store: ``error_code`` is ``invalid`` or ``too_large`` (400/413)."""

    code = 400
    error_code = "invalid"

    def __init__(self, description: str, error_code: str = "invalid") -> None:
        super().__init__(description, error_code)
        self.code = 413 if error_code == "too_large" else 400


class SessionTooLarge(Refused):
    """The app put more in ``flask.session`` than a server-side session may hold (``SESSION_DATA_MAX``)."""

    def __init__(self, description: str) -> None:
        super().__init__(description, "too_large")
