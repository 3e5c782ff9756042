"""Sign-up, login and logout.

Password hashing runs here, in a waitress thread, so the daemon's event loop
never spends tens of milliseconds on scrypt.
"""

from __future__ import annotations

from functools import cache

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response

from logonmesh.daemon.client import DaemonError
from logonmesh.web import throttle
from logonmesh.web.forms import LoginForm, SignupForm
from logonmesh.web.node import daemon
from logonmesh.web.sessions import end_session, pop_return_path, remember_return_path, start_session

bp = Blueprint("auth", __name__)

WRONG_LOGIN = "Wrong username or password."
STORE_DOWN_MESSAGE = ("Sign-ups are paused: the user store cannot be reached right now. "
                      "Logging in still works. Try again in a moment.")


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Response | tuple[str, int]:
    form = SignupForm()
    error = None
    if form.validate_on_submit():
        error = _register(form.username.data, form.password.data)
        if error is None:
            return redirect(url_for("auth.login"))
    # 503 while the store is out, so that monitors and retrying clients see a temporary failure
    return render_template("signup.html", form=form, error=error), 503 if error == STORE_DOWN_MESSAGE else 200


def _register(username: str, password: str) -> str | None:
    """Store the user through the daemon; return an error for the form, or None on success."""
    try:
        daemon().call("register", username=username, password_hash=generate_password_hash(password))
    except DaemonError as exc:
        if exc.code == "taken":
            return "That username is taken. Choose another."
        if exc.code == "store_unavailable":  # Redis (or the database) is out
            return STORE_DOWN_MESSAGE
        raise
    return None


@bp.route("/", methods=["GET", "POST"])
def login() -> Response | str:
    remember_return_path(request.args.get("next"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        username = form.username.data
        throttle.check(username)  # 429 before any hash: a locked-out guess learns nothing
        if _password_ok(username, form.password.data):
            throttle.succeeded(username)
            start_session(username)
            return redirect(pop_return_path() or url_for("pages.budget"))
        throttle.failed(username)
        error = WRONG_LOGIN
    return render_template("login.html", form=form, error=error)


def _password_ok(username: str, password: str) -> bool:
    """An unknown user still costs one hash check, so timing does not tell which usernames exist."""
    user = daemon().call("user", username=username)
    if user is None:
        check_password_hash(_decoy_hash(), password)
        return False
    return check_password_hash(user["password_hash"], password)


@cache
def _decoy_hash() -> str:
    return generate_password_hash("logonmesh decoy password")


@bp.post("/logout")
def logout() -> Response:
    """CSRFProtect has already checked the token; revoking it reaches every node through the mesh."""
    end_session()
    return redirect(url_for("auth.login"))
