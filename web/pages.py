"""The protected pages (the budget demo, the cluster view), the health check, and every page's footer."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, url_for
from werkzeug.wrappers import Response

from logonmesh.flask import MeshError, MeshUnavailable, Refused, current_user, login_required
from logonmesh.web import budget as budget_data
from logonmesh.web import mesh, present
from logonmesh.web.forms import BudgetEntryForm, LogoutForm

bp = Blueprint("pages", __name__)

HEALTH_TIMEOUT_MS = 500  # a load balancer's probe should learn fast, not wait for the page timeout
GLANCE_TTL_S = 1.0       # the footer's view of the cluster is at most this old
GLANCE_TIMEOUT_MS = 300  # the footer waits this long for a ping, once a second at most, never more

# The code of the mesh's refusal of a budget entry -> (message for the form, status)
BUDGET_REFUSALS = {
    "store_unavailable": ("Entries cannot be saved right now: the user store cannot be reached. "
                          "Try again in a moment.", 503),
    "invalid": ("This entry cannot be saved: the daemon refused it.", 200),
    "too_large": ("This entry is too large to be saved.", 200),
}


def _page(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/budget")
@login_required
def budget() -> Response:
    return _budget_page(current_user.username, BudgetEntryForm())


@bp.post("/budget")
@login_required
def budget_add() -> Response:
    """Add an entry, then redirect back (PRG); a refused entry shows the page again with the error in place."""
    username, form = current_user.username, BudgetEntryForm()
    if not form.validate_on_submit():
        return _budget_page(username, form)
    try:
        added = budget_data.add(mesh.records(budget_data.NAMESPACE), username, form.label.data, form.cents)
    except budget_data.Refused as exc:
        getattr(form, exc.field).errors = [str(exc)]
        return _budget_page(username, form)
    except (Refused, MeshUnavailable) as exc:
        if exc.error_code not in BUDGET_REFUSALS:
            raise
        message, status = BUDGET_REFUSALS[exc.error_code]
        return _budget_page(username, form, error=message, status=status)
    flash(f"Added \u201c{added['label']}\u201d, {present.money(added['cents'])}.")
    return redirect(url_for("pages.budget"), 303)


def _budget_page(username: str, entry_form: BudgetEntryForm, error: str | None = None,
                 status: int = 200) -> Response:
    """The entries and their total, from the mirror when it is current, else one record_items round trip."""
    listed = budget_data.listing(mesh.records(budget_data.NAMESPACE), username)
    page = render_template("budget.html", username=username, node=mesh.node, form=LogoutForm(),
                           entry_form=entry_form, error=error, entries=present.budget_rows(listed["entries"]),
                           total=present.money(listed["total_cents"]),
                           total_negative=listed["total_cents"] < 0)
    return _page(page, status)


@bp.get("/cluster")
@login_required
def cluster() -> Response:
    """The live peers table, as `logonmesh peers` shows it, and a chart of each peer's recent heartbeats."""
    username = current_user.username
    view = mesh.peers()
    me = view.get("node", mesh.node)
    rows = present.peer_rows(me, view)
    heartbeat_ms, down_after_ms = view.get("heartbeat_ms", 1000), view.get("down_after_ms", 3000)
    peers = sorted(view["peers"], key=lambda p: p["name"])
    charts = [present.beat_chart(p, heartbeat_ms, down_after_ms) for p in peers]
    page = render_template("cluster.html", username=username, node=mesh.node, form=LogoutForm(),
                           rows=rows, charts=charts, digest=view["digest"][:12],
                           clock_notes=present.clock_notes(me, view),
                           max_offset=present.ago(view.get("max_clock_offset_ms", 500)),
                           down=sum(not r["up"] for r in rows), heartbeat=present.ago(heartbeat_ms),
                           down_after=present.ago(down_after_ms))
    return _page(page)


# ---- every page's footer: the serving node and the peers it sees up --------------------------

class Glance:
    """This node's daemon's `ping`, asked at most once a second per web process, shared by every page.

    One request thread refreshes it while the others use the last answer, so
    the footer never costs a page more than one short ping, and a page never
    fails because of it: a silent daemon shows as "not answering".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        if time.monotonic() - self._at < GLANCE_TTL_S or not self._lock.acquire(blocking=False):
            return self._value
        try:
            try:
                value = {"daemon": True, "peers_up": mesh.ping(GLANCE_TIMEOUT_MS)}
            except MeshError:
                value = {"daemon": False, "peers_up": []}
            self._value, self._at = value, time.monotonic()
            return value
        finally:
            self._lock.release()


@bp.app_context_processor
def page_frame() -> dict[str, Any]:
    """For base.html: the footer's glance and the links only this app has (other apps may render the templates)."""
    glance = current_app.extensions.setdefault("logonmesh.glance", Glance())
    return {"glance": glance.get(), "cluster_url": url_for("pages.cluster"), "node_name": mesh.node,
            "sessions_url": url_for("sessions.sessions")}


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        peers_up = mesh.ping(HEALTH_TIMEOUT_MS)
    except MeshError:
        return jsonify(node=mesh.node, daemon=False, peers_up=[]), 503
    return jsonify(node=mesh.node, daemon=True, peers_up=peers_up), 200
