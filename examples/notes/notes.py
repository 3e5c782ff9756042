"""Notes: private notes for signed-up people, on every node of a logonmesh cluster.

A small Flask app built only on the public API, ``logonmesh.flask``, to show
what an app of yours does with it:

- sign-up, login and logout through ``mesh.register``, ``mesh.login`` and
  ``mesh.logout`` (a logout on one node ends the login on every node);
- each person's notes in ``mesh.records("notes")``, under the key
  ``<username>/<note id>``, replicated to every node;
- the note last viewed in ``flask.session``, which logonmesh keeps server-side
  and replicated, so any node knows it from the same cookie;
- CSRF on every form with Flask-WTF (logonmesh imposes none);
- read-only JSON under ``/api/`` (``GET /api/me``, ``/api/notes``,
  ``/api/notes/<id>``), so scripts and tests need not parse pages.

Run it with ``logonmesh web --name node1 --app notes:create_app`` from this
folder (README.md).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Regexp

from logonmesh.flask import LogonMesh, MeshError, Refused, UsernameTaken, current_user, login_required

NAMESPACE = "notes"
LAST_VIEWED = "last_viewed"  # the flask.session key: the id of the note this session viewed last
NOTE_ID = re.compile(r"[0-9a-f]{24}")
BODY_MAX = 1000              # characters: well inside a record's 4096 bytes packed, even all in 4-byte UTF-8

mesh = LogonMesh(login_view="/")
csrf = CSRFProtect()
bp = Blueprint("notes", __name__)


class SignupForm(FlaskForm):
    # Only these characters: "/" separates the username from the note id in a record's key.
    username = StringField("Username", validators=[
        DataRequired(), Length(max=64), Regexp(r"^[A-Za-z0-9_.-]+$", message="Letters, digits, _ . - only.")])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=200)])


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class NoteForm(FlaskForm):
    title = StringField("Title", validators=[DataRequired(), Length(max=100)])
    body = TextAreaField("Note", validators=[Length(max=BODY_MAX)])


def create_app() -> Flask:
    """This node's app: logonmesh reads the node's settings from the LOGONMESH_* environment."""
    app = Flask(__name__)
    app.config.update(WTF_CSRF_TIME_LIMIT=None)  # the token lives as long as the (server-side) session
    mesh.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.context_processor(lambda: {"user": current_user, "node": mesh.node})
    return app


# ---- the notes, in mesh.records ----------------------------------------------

def new_note_id() -> str:
    """Time first, so that keys sort by creation; random after, so two nodes never pick the same id."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def my_notes() -> list[dict[str, Any]]:
    """The current user's notes, newest first.

    A key is ``<username>/<id>``: the prefix ``alice/`` also matches the notes
    of a user ``alice/x`` (another app of the cluster may allow that name), so
    only keys with a note id after the prefix are Alice's.  The namespace is
    the cluster's, so a value that is not a note is skipped, not shown.
    """
    prefix = f"{current_user.username}/"
    notes = [dict(value, id=key[len(prefix):]) for key, value in mesh.records(NAMESPACE).items(prefix)
             if NOTE_ID.fullmatch(key[len(prefix):]) and isinstance(value, dict)]
    return notes[::-1]


def find_note(note_id: Any) -> dict[str, Any] | None:
    """One of the current user's notes, or None (no such id, or not a note)."""
    if not isinstance(note_id, str) or not NOTE_ID.fullmatch(note_id):
        return None
    note = mesh.records(NAMESPACE).get(f"{current_user.username}/{note_id}")
    return dict(note, id=note_id) if isinstance(note, dict) else None


def note_or_404(note_id: str) -> dict[str, Any]:
    note = find_note(note_id)
    if note is None:
        abort(404)
    return note


def viewed(note_id: str) -> None:
    """Remember the note in the session, saved only when it changes (a read-only request saves nothing)."""
    if session.get(LAST_VIEWED) != note_id:
        session[LAST_VIEWED] = note_id


def last_viewed() -> dict[str, Any] | None:
    """The session's last viewed note, if it still exists (it may have been deleted on another node)."""
    return find_note(session.get(LAST_VIEWED))


# ---- pages ---------------------------------------------------------------------

@bp.route("/", methods=["GET", "POST"])
def login() -> Response | str:
    if current_user.is_authenticated and request.method == "GET":
        return redirect(url_for("notes.index"))
    mesh.remember_return_path(request.args.get("next"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        if mesh.login(form.username.data, form.password.data):  # TooManyAttempts: a 429 with Retry-After
            return redirect(mesh.return_path(url_for("notes.index")))
        error = "Wrong username or password."
    return render_template("login.html", form=form, error=error)


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Response | str:
    form = SignupForm()
    error = None
    if form.validate_on_submit():
        try:
            mesh.register(form.username.data, form.password.data)
            return redirect(url_for("notes.login"))
        except UsernameTaken:
            error = "That username is taken."
    return render_template("signup.html", form=form, error=error)


@bp.post("/logout")
def logout() -> Response:
    """CSRFProtect has checked the token; the logout reaches every node."""
    mesh.logout()
    return redirect(url_for("notes.login"))


@bp.route("/notes", methods=["GET", "POST"])
@login_required
def index() -> Response | tuple[str, int]:
    form = NoteForm()
    error = None
    if form.validate_on_submit():
        note_id = new_note_id()
        try:
            mesh.records(NAMESPACE).put(f"{current_user.username}/{note_id}",
                                        {"title": form.title.data, "body": form.body.data or "",
                                         "created": int(time.time())})
            return redirect(url_for("notes.note", note_id=note_id))
        except Refused as exc:
            error = f"That note cannot be stored: {exc.description}"
    status = 400 if form.errors or error else 200
    return render_template("notes.html", form=form, notes=my_notes(), last=last_viewed(), error=error), status


@bp.get("/notes/<note_id>")
@login_required
def note(note_id: str) -> str:
    found = note_or_404(note_id)
    viewed(note_id)
    return render_template("note.html", note=found)


@bp.post("/notes/<note_id>/delete")
@login_required
def delete(note_id: str) -> Response:
    """CSRFProtect has checked the token before this view runs, as for every POST."""
    note_or_404(note_id)
    mesh.records(NAMESPACE).delete(f"{current_user.username}/{note_id}")
    if session.get(LAST_VIEWED) == note_id:
        session.pop(LAST_VIEWED)
    return redirect(url_for("notes.index"))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """For load balancers and the harness: 200 while this node's daemon answers."""
    try:
        mesh.ping(timeout_ms=500)
    except MeshError:
        return jsonify(ok=False, node=mesh.node), 503
    return jsonify(ok=True, node=mesh.node), 200


# ---- read-only JSON (a GET needs no CSRF token) -------------------------------------

@bp.get("/api/me")
@login_required
def api_me() -> Response:
    return jsonify(username=current_user.username, node=mesh.node, last_viewed=session.get(LAST_VIEWED))


@bp.get("/api/notes")
@login_required
def api_notes() -> Response:
    return jsonify(node=mesh.node, notes=my_notes(), last_viewed=session.get(LAST_VIEWED))


@bp.get("/api/notes/<note_id>")
@login_required
def api_note(note_id: str) -> Response:
    """Viewing a note through the API makes it the last viewed, as the page does."""
    found = note_or_404(note_id)
    viewed(note_id)
    return jsonify(node=mesh.node, note=found)
