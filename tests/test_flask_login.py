"""An app that already uses Flask-Login keeps it, with LogonMesh behind its ``user_loader``.

Flask-Login's ``login_required`` and ``current_user`` stay; what changes is
where the login lives: ``mesh.login`` starts the session in the mesh, and the
``user_loader`` answers only while the mesh says that session is alive.  So a
logout on one node ends the Flask-Login login on every node, which a
Flask-Login app on signed cookies cannot do, not even for the "remember me"
cookie Flask-Login signs itself: that cookie can name a user, but the loader
still answers None once the mesh session has ended.  This runs the app on two
real nodes.  The pattern, as docs/flask.md quotes it, is ``APP`` below.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import LocalCluster, Node, eventually

PASSWORD = "correct horse battery"
REPLICATE_S = 5.0

APP = '''\
from flask import Flask, request
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from logonmesh.flask import LogonMesh


def create_app():
    app = Flask(__name__)
    mesh = LogonMesh(app)
    login_manager = LoginManager(app)

    @login_manager.user_loader
    def load_user(user_id):
        # the mesh's user of this request, while its session lives on this node; a logout anywhere ends it
        user = mesh.user()
        return user if user is not None and user.get_id() == user_id else None

    @app.post("/signup")
    def signup():
        mesh.register(request.form["username"], request.form["password"])
        return "signed up", 201

    @app.post("/login")
    def login():
        if not mesh.login(request.form["username"], request.form["password"]):
            return "wrong username or password", 401
        login_user(mesh.user(), remember=request.form.get("remember") == "yes")
        return "logged in"

    @app.post("/logout")
    def logout():
        mesh.logout()  # first: if the mesh cannot be reached, this raises (503) and nothing is logged out
        logout_user()
        return "logged out"

    @app.get("/private")
    @login_required
    def private():
        return f"hello {current_user.username}"

    return app
'''


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    (tmp_path / "flask_login_app.py").write_text(APP)
    with LocalCluster(app="flask_login_app:create_app", cwd=tmp_path) as c:
        c.start_nodes("node", 2)
        yield c


def post(http: requests.Session, node: Node, path: str, **form: str) -> requests.Response:
    return http.post(node.url + path, data=form, timeout=5)


def private(http: requests.Session, node: Node) -> requests.Response:
    return http.get(node.url + "/private", timeout=5)


def test_a_logout_on_node1_ends_the_flask_login_login_on_node2(cluster: LocalCluster) -> None:
    n1, n2 = cluster.nodes
    username = f"fl-{uuid.uuid4().hex[:8]}"
    you = requests.Session()
    assert post(you, n1, "/signup", username=username, password=PASSWORD).status_code == 201
    assert private(you, n1).status_code == 401  # Flask-Login's own answer, with no login_view
    assert post(you, n1, "/login", username=username, password=PASSWORD, remember="yes").status_code == 200
    assert "remember_token" in you.cookies  # Flask-Login's own, signed with the SECRET_KEY every node shares
    assert private(you, n1).text == f"hello {username}"
    eventually(lambda: private(you, n2).text == f"hello {username}", timeout=REPLICATE_S)

    # The same login in another tab: the logout's answer clears only this jar's cookies.  The tab keeps the
    # remember cookie too, which a user_loader that read a user table would honour on any node after the logout.
    tab = requests.Session()
    tab.cookies.update(you.cookies)
    assert private(tab, n2).status_code == 200
    assert post(you, n1, "/logout").status_code == 200
    eventually(lambda: private(tab, n2).status_code == 401, timeout=REPLICATE_S)
    assert private(tab, n1).status_code == 401
