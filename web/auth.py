"""Sign-up, login and logout, through ``mesh.register``, ``mesh.login`` and ``mesh.logout``.

Password hashing runs in the web process (a waitress thread), inside
``LogonMesh``, so the daemon's event loop never spends tens of milliseconds on
scrypt; throttling (429) is raised by ``mesh.login`` and shown by errors.py.
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from logonmesh.flask import MeshUnavailable, UsernameTaken
from logonmesh.web import mesh
from logonmesh.web.forms import LoginForm, SignupForm

bp = Blueprint("auth", __name__)

WRONG_LOGIN = "Wrong username or password."
STORE_DOWN_MESSAGE = ("Sign-ups are paused: the user store cannot be reached right now. "
                      "Logging in still works. Try again in a moment.")


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Response | tuple[str, int]:
    form = SignupForm()
    error = None
    if form.validate_on_submit():
        try:
            mesh.register(form.username.data, form.password.data)
            return redirect(url_for("auth.login"))
        except UsernameTaken:
            error = "That username is taken. Choose another."
        except MeshUnavailable as exc:
            if exc.error_code != "store_unavailable":
                raise  # the daemon itself is out: the 503 page
            error = STORE_DOWN_MESSAGE
    # 503 while the store is out, so that monitors and retrying clients see a temporary failure
    return render_template("signup.html", form=form, error=error), 503 if error == STORE_DOWN_MESSAGE else 200


@bp.route("/", methods=["GET", "POST"])
def login() -> Response | str:
    mesh.remember_return_path(request.args.get("next"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        if mesh.login(form.username.data, form.password.data):
            return redirect(mesh.return_path(url_for("pages.budget")))
        error = WRONG_LOGIN
    return render_template("login.html", form=form, error=error)


@bp.post("/logout")
def logout() -> Response:
    """CSRFProtect has already checked the token; the logout reaches every node through the mesh."""
    mesh.logout()
    return redirect(url_for("auth.login"))
