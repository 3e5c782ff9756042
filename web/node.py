"""What every view needs from the running node: its name and its daemon client."""

from __future__ import annotations

from flask import current_app

from logonmesh.web.link import DaemonLink
from logonmesh.web.mirror import SessionMirror


def daemon() -> DaemonLink:
    """The client to this node's daemon, set up once per app by create_app."""
    return current_app.extensions["logonmesh.daemon"]


def mirror() -> SessionMirror:
    """This node's local mirror of the daemon's sessions."""
    return current_app.extensions["logonmesh.mirror"]


def node_name() -> str:
    return current_app.config["LOGONMESH_NODE"]
