"""Cluster-wide logins and replicated server-side sessions for your Flask app (docs/flask.md).

::

    from flask import Flask, session
    from logonmesh.flask import LogonMesh, current_user, login_required

    def create_app():
        app = Flask(__name__)
        mesh = LogonMesh(app)
        ...

Everything here is public and kept stable; the rest of ``logonmesh`` is ours to change.
"""

from logonmesh.flask.errors import MeshError, MeshUnavailable, Refused, SessionTooLarge, TooManyAttempts, UsernameTaken
from logonmesh.flask.extension import LogonMesh
from logonmesh.flask.metrics import metrics_blueprint
from logonmesh.flask.records import Records
from logonmesh.flask.sessions import peer_down, peer_up, session_ended, session_revoked, session_started
from logonmesh.flask.users import AnonymousUser, MeshUser, current_user, login_required

__all__ = [
    "AnonymousUser", "LogonMesh", "MeshError", "MeshUnavailable", "MeshUser", "Records", "Refused",
    "SessionTooLarge", "TooManyAttempts", "UsernameTaken", "current_user", "login_required", "metrics_blueprint",
    "peer_down", "peer_up", "session_ended", "session_revoked", "session_started",
]
