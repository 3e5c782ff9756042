"""The protected page and the health check."""

from __future__ import annotations

from flask import Blueprint, jsonify, redirect, render_template, url_for
from werkzeug.wrappers import Response

from daemon.client import DaemonError, DaemonUnavailable
from web.forms import LogoutForm
from web.node import daemon, node_name
from web.sessions import current_session, remember_return_path, requested_path

bp = Blueprint("pages", __name__)

HEALTH_TIMEOUT_MS = 500  # a load balancer's probe should learn fast, not wait for the page timeout


@bp.get("/budget")
def budget() -> Response:
    found = current_session()
    if found is None:
        remember_return_path(requested_path())
        return redirect(url_for("auth.login"))
    page = render_template("budget.html", username=found["user"], node=node_name(), form=LogoutForm())
    response = Response(page, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        info = daemon().call("ping", timeout_ms=HEALTH_TIMEOUT_MS)
    except (DaemonUnavailable, DaemonError):
        return jsonify(node=node_name(), daemon=False, peers_up=[]), 503
    return jsonify(node=node_name(), daemon=True, peers_up=info["peers_up"]), 200
