"""Your sessions, everywhere: the list of a person's logins on the whole cluster, and the buttons that end them.

Built on ``mesh.sessions`` and ``mesh.revoke`` only, like any app could be.
A session is named by its public id, which is not its token: the page can
show it, and a form can post it back, without handing out a credential.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from logonmesh.flask import current_user, login_required
from logonmesh.web import mesh
from logonmesh.web.forms import LogoutForm, RevokeSessionForm

bp = Blueprint("sessions", __name__)


@bp.get("/sessions")
@login_required
def sessions() -> Response:
    return _sessions_page(RevokeSessionForm())


@bp.post("/sessions/revoke")
@login_required
def revoke() -> Response:
    """End one session (``session_id``) or every other one (``all_others=1``), then back to the list (PRG)."""
    form = RevokeSessionForm()
    if not form.validate_on_submit():
        return _sessions_page(form, status=400)
    username = current_user.username
    if form.all_others.data == "1":
        ended = mesh.revoke(username, keep_current=True)
        flash(f"Ended {len(ended)} other session{'' if len(ended) == 1 else 's'}.")
        return redirect(url_for("sessions.sessions"), 303)
    was_mine = form.session_id.data == mesh.current_session_id()
    ended = mesh.revoke(username, form.session_id.data)
    if was_mine:
        return redirect(url_for("auth.login"), 303)  # it was this one: logged out here too
    flash("Session ended." if ended else "That session had already ended.")
    return redirect(url_for("sessions.sessions"), 303)


def _sessions_page(form: RevokeSessionForm, status: int = 200) -> Response:
    username = current_user.username
    rows = [_row(found) for found in mesh.sessions(username)]
    page = render_template("sessions.html", username=username, node=mesh.node, form=LogoutForm(),
                           revoke_form=form, rows=rows, others=sum(not row["current"] for row in rows))
    response = Response(page, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _row(found: dict[str, Any]) -> dict[str, Any]:
    """What one row of the table shows: dates to the minute, the rest as the daemon said it."""
    return {**found, "created": _minute(found["created_at"]), "seen": _minute(found["last_seen"])}


def _minute(iso: str) -> str:
    """'2026-01-02T10:41:07.113+00:00' -> '2026-01-02 10:41 UTC' (the daemons write UTC); else as it is."""
    if len(iso) < 16:
        return iso
    return f"{iso[:10]} {iso[11:16]}" + (" UTC" if iso.endswith(("+00:00", "Z")) else "")
