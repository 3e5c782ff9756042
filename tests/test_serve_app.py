"""Serving a user's own Flask app as a node's web process (issue 15): ``logonmesh web --app``, the harness, the plugin.

The app lives in a fresh directory outside the repository, beside packages of
its own named ``web`` and ``daemon`` (the names of our folders in the
checkout), and knows nothing of logonmesh but the LOGONMESH_* variables the
web command exports: if any of ours shadowed its packages, or the command
served the demo instead, or the settings it sees were not the resolved ones,
these tests would see it.  Real processes throughout, except for the pure
pieces (the exported environment, the mirror's start, the demo's factory).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import requests
from flask import Flask

from logonmesh import testing
from logonmesh.commands.webapp import AppLoadError, environ_of, load_app, prepare
from logonmesh.daemon import config
from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import DEFAULT_APP, Browser, LocalCluster, Node, eventually
from logonmesh.commands.serve import start_mirror, stop

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which("logonmesh", path=os.path.dirname(sys.executable)) or shutil.which("logonmesh")
APP = "myapp:create_app"
MARK = "the user's own web package"
PATHS = {"login_path": "/account/login", "logout_path": "/account/logout", "protected_path": "/private",
         "signup_path": "/join"}

MYAPP = '''
    """A plain Flask app of a user's: no logonmesh in it, only the settings that `logonmesh web` exports."""
    import hmac
    import os
    import secrets

    from flask import Flask, abort, jsonify, redirect, request, session

    import daemon  # the user's own packages, named like folders of logonmesh's checkout
    import web

    USERS = {}


    def create_app():
        app = Flask(__name__)
        app.secret_key = os.environ["LOGONMESH_COOKIE"]  # the same on every node: a cookie works on each

        def form(action):
            token = session.setdefault("csrf", secrets.token_hex(8))
            return f'<form method="post" action="{action}"><input name="csrf_token" value="{token}"></form>'

        def check_csrf():
            if not hmac.compare_digest(request.form.get("csrf_token", ""), session.get("csrf", "")):
                abort(400)

        @app.get("/whoami")
        def whoami():
            env = os.environ
            return jsonify(node=env["LOGONMESH_NODE"], db=env["LOGONMESH_DB"], port=env["LOGONMESH_PORT"],
                           heartbeat_ms=env["LOGONMESH_HEARTBEAT_MS"], app=env["LOGONMESH_APP"],
                           web=web.MARK, web_file=web.__file__, daemon=daemon.MARK, cwd=os.getcwd())

        @app.route("/join", methods=["GET", "POST"])
        def join():
            if request.method == "GET":
                return form("/join")
            check_csrf()
            USERS[request.form["username"]] = request.form["password"]
            return redirect("/account/login")

        @app.route("/account/login", methods=["GET", "POST"])
        def login():
            if request.method == "GET":
                return form("/account/login")
            check_csrf()
            if USERS.get(request.form["username"]) != request.form["password"]:
                return form("/account/login")
            session["user"] = request.form["username"]
            return redirect("/private")

        @app.post("/account/logout")
        def logout():
            check_csrf()
            session.pop("user", None)
            return redirect("/account/login")

        @app.get("/private")
        def private():
            if "user" not in session:
                if request.accept_mimetypes.best == "application/json":
                    return jsonify(error="login required"), 401
                return redirect("/account/login")
            return form("/account/logout") + f"<p>{session['user']}</p>"

        return app
'''

BAD = '''
    import flask

    NOT_CALLABLE = 3


    def raises():
        raise RuntimeError("the factory gave up")


    def returns_a_number():
        return 42


    app = flask.Flask(__name__)
'''


def write_app(where: Path) -> Path:
    """The user's project: myapp.py, bad.py, and their own web/ and daemon/ packages."""
    (where / "myapp.py").write_text(textwrap.dedent(MYAPP))
    (where / "bad.py").write_text(textwrap.dedent(BAD).lstrip())  # raises() raises on line 7
    (where / "broken.py").write_text("def create_app(:\n")
    for package in ("web", "daemon"):
        (where / package).mkdir()
        (where / package / "__init__.py").write_text(f"MARK = {MARK.replace('web', package)!r}\n")
    return where


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = write_app(tmp_path_factory.mktemp("userapp"))
    assert ROOT not in where.parents, "the user's app must live outside the repository"
    return where


@pytest.fixture(scope="module")
def cluster(app_dir: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two nodes serving the user's app, from its directory (the test runs from the repository's)."""
    attach_logs_on_failure(request.config)
    with LocalCluster(app=APP, cwd=app_dir) as c:
        c.start_nodes("node", 2)
        yield c


def whoami(node: Node) -> dict:
    resp = requests.get(f"{node.url}/whoami", timeout=5)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()


def everyone_up(cluster: LocalCluster) -> None:
    live = cluster.live()
    assert cluster.views() == {n.name: {o.name for o in live if o is not n} for n in live}


# ---- LocalCluster(app=...) --------------------------------------------------------------------

def test_every_node_serves_the_users_app_with_its_own_packages_and_the_resolved_settings(
        cluster: LocalCluster, app_dir: Path) -> None:
    for node in cluster.nodes:
        seen = whoami(node)
        assert (seen["node"], seen["app"], seen["cwd"]) == (node.name, APP, str(app_dir))
        assert (seen["web"], seen["daemon"]) == (MARK, MARK.replace("web", "daemon"))
        assert Path(seen["web_file"]).parent.parent == app_dir
        # --port came as a flag and the rest from the environment: the app sees both, resolved
        assert (seen["db"], seen["port"], seen["heartbeat_ms"]) == (cluster.db, str(node.port),
                                                                   str(cluster.heartbeat_ms))
    assert requests.get(f"{cluster.nodes[0].url}/budget", timeout=5).status_code == 404  # not the demo


def test_the_harness_cuts_pauses_kills_and_restarts_nodes_that_serve_the_users_app(cluster: LocalCluster) -> None:
    """The app has no /healthz: a node is ready when its daemon answers and its web answers at all."""
    n1, n2 = cluster.nodes
    cluster.isolate(n1)
    eventually(lambda: cluster.views() == {"node1": set(), "node2": set()}, timeout=5)
    cluster.heal()
    eventually(lambda: everyone_up(cluster), timeout=5)

    n2.stop()  # SIGTERM: the user's app exits as cleanly as the demo
    assert (n2.web.popen.returncode, n2.daemon.popen.returncode) == (0, 0), n2.logs()[-2000:]
    n2.start()
    cluster.wait_ready([n2])
    n1.pause()
    n1.resume()
    n1.kill()
    n1.start()
    cluster.wait_ready()
    eventually(lambda: everyone_up(cluster), timeout=5)
    assert [whoami(n)["node"] for n in cluster.nodes] == ["node1", "node2"]


# ---- Browser's paths ------------------------------------------------------------------------

def test_browser_uses_the_paths_it_is_given_and_at_keeps_them(cluster: LocalCluster) -> None:
    n1, n2 = cluster.nodes
    b = Browser(n1.url, **PATHS)
    assert b.authenticated() is False
    resp = b.get_json("/private")
    assert (resp.status_code, resp.json()) == (401, {"error": "login required"})
    assert b.get("/private").status_code == 302  # no Accept: application/json, a person's redirect
    assert (b.signup("ada", "pw").status_code, b.last.headers["Location"]) == (302, "/account/login")
    assert (b.login("ada", "pw").status_code, b.last.headers["Location"]) == (302, "/private")
    assert b.authenticated() is True
    other = b.at(n2.url)
    assert {k: getattr(other, k) for k in PATHS} == PATHS
    assert other.authenticated() is True  # the same signed cookie, the same secret on n2
    assert other.logout().status_code == 302  # its CSRF token came from /private, as logout() read it
    assert other.authenticated() is False and b.authenticated() is False


def test_browser_defaults_are_the_demos_paths() -> None:
    b = Browser("http://127.0.0.1:1/")
    assert (b.url, b.login_path, b.logout_path, b.protected_path, b.signup_path) == \
           ("http://127.0.0.1:1", "/", "/logout", "/budget", "/signup")


def test_get_json_keeps_other_headers_and_lets_the_caller_ask_for_something_else(cluster: LocalCluster) -> None:
    b = Browser(cluster.nodes[0].url, **PATHS)
    assert b.get_json("/private", headers={"X-Test": "1"}).status_code == 401
    assert b.get_json("/private", headers={"Accept": "text/html"}).status_code == 302


def test_local_cluster_checks_its_app_and_cwd_before_making_anything(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_directory(*args: object, **kwargs: object) -> str:
        raise AssertionError("a cluster directory was made for a cluster that cannot start")
    monkeypatch.setattr(testing.tempfile, "mkdtemp", no_directory)
    with pytest.raises(ValueError, match=r"LocalCluster\(app=...\): must be MODULE:FACTORY"):
        LocalCluster(app="myapp")
    with pytest.raises(ValueError, match="is not a directory"):
        LocalCluster(cwd=tmp_path / "nowhere")


def test_local_cluster_defaults_to_the_demo_from_the_working_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with LocalCluster() as c:
        assert (c.app, c.cwd) == (DEFAULT_APP, str(tmp_path)) and DEFAULT_APP == "logonmesh.web:create_app"
    with LocalCluster(env={"LOGONMESH_APP": "other:make"}) as c:
        assert c.app == "other:make"


# ---- logonmesh web --app: the errors -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_env(app_dir: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGONMESH_") and k != "PORT"}
    env.update(LOGONMESH_DB=str(app_dir / "var" / "cluster.db"), LOGONMESH_RUN_DIR=str(app_dir / "run"), **more)
    return env


def run_web(app_dir: Path, app: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "web", "--name", "x1", "--port", str(free_port()), "--app", app], cwd=app_dir,
                          env=web_env(app_dir), capture_output=True, text=True, timeout=30)


def test_the_procfile_line_serves_the_users_app_and_stops_on_sigterm(app_dir: Path, tmp_path: Path) -> None:
    """``web: logonmesh web --name node1 --app myapp:create_app``, run as honcho runs it (the console script).

    The port comes from PORT, as honcho sets it; the app sees it as LOGONMESH_PORT.
    """
    port = free_port()
    env = web_env(app_dir, LOGONMESH_COOKIE="a-cookie-for-this-test", PORT=str(port))
    with open(tmp_path / "web.log", "wb") as log:
        proc = subprocess.Popen([EXE, "web", "--name", "node1", "--app", APP], cwd=app_dir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def served() -> dict:
            assert proc.poll() is None, (tmp_path / "web.log").read_text()
            return requests.get(f"http://127.0.0.1:{port}/whoami", timeout=2).json()
        seen = eventually(served, timeout=20, interval=0.1)
        assert (seen["node"], seen["port"], seen["web"]) == ("node1", str(port), MARK)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "web.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("app, why", [
    ("nosuch:create_app", "no module named 'nosuch' in {dir} or the installed packages"),
    ("myapp:make_app", "module 'myapp' ({dir}/myapp.py) has no attribute 'make_app'"),
    ("bad:raises", "raises() raised RuntimeError: the factory gave up (bad.py:7)"),
    ("bad:returns_a_number", "returns_a_number() returned an int, not a Flask app"),
    ("bad:NOT_CALLABLE", "'NOT_CALLABLE' is an int, not a Flask app factory"),
    ("broken:create_app", "importing 'broken' raised SyntaxError: invalid syntax (broken.py:1)"),
])
def test_an_app_that_cannot_be_loaded_is_one_line_and_exit_2(app_dir: Path, app: str, why: str) -> None:
    proc = run_web(app_dir, app)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]  # the log's own lines
    assert lines == [f"logonmesh: cannot load the app '{app}': {why.format(dir=app_dir)}"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_app_spec_of_the_wrong_shape_is_refused_as_a_setting(app_dir: Path) -> None:
    proc = run_web(app_dir, "myapp")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "logonmesh: --app / LOGONMESH_APP: must be MODULE:FACTORY (say myapp:create_app), " \
                                  "got 'myapp'"


# ---- the pieces, in process -----------------------------------------------------------------

def test_the_exported_environment_loads_back_to_the_same_settings() -> None:
    settings = config.load({"name": "n1", "curve": "1", "heartbeat_ms": "250", "app": APP}, environ={})
    environ = environ_of(settings, 4321)
    assert environ["LOGONMESH_PORT"] == "4321" and environ["LOGONMESH_CURVE"] == "1"
    assert "LOGONMESH_COOKIE" not in environ  # unset: the app finds the cookie file as the command would
    assert config.load(environ=environ) == config.Settings(**{**settings.__dict__, "port": 4321})


def test_prepare_puts_the_working_directory_first_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    environ: dict[str, str] = {}
    prepare(config.load({"name": "n1"}, environ={}), 4000, environ=environ, cwd=str(tmp_path))
    assert sys.path[0] == str(tmp_path) and environ["LOGONMESH_NODE"] == "n1"


def test_an_app_named_directly_is_taken_as_it_is(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(app_dir), *sys.path])
    monkeypatch.delitem(sys.modules, "bad", raising=False)
    app = load_app("bad:app")
    assert isinstance(app, Flask) and app.name == "bad"
    with pytest.raises(AppLoadError, match="returned an int"):
        load_app("bad:returns_a_number")


def test_start_mirror_starts_a_logonmesh_extension_and_leaves_a_plain_app_alone() -> None:
    started: list[tuple[str, object]] = []

    class Starts:
        def start(self, on_give_up: object = None) -> None:
            started.append(("extension", on_give_up))

    ext, plain = Flask("ext"), Flask("plain")
    ext.extensions["logonmesh"] = Starts()
    for app in (ext, plain):
        start_mirror(app)
    assert started == [("extension", stop)]  # a mirror that gives up stops the server the clean way


def test_the_demos_factory_reads_the_environment_when_called_with_no_arguments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logonmesh.web import create_app
    for key in [k for k in os.environ if k.startswith("LOGONMESH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LOGONMESH_NODE", "envnode")
    monkeypatch.setenv("LOGONMESH_DB", str(tmp_path / "cluster.db"))
    monkeypatch.setenv("LOGONMESH_RUN_DIR", str(tmp_path / "run"))
    app = create_app()
    assert app.extensions["logonmesh"].node == "envnode"
    assert (tmp_path / "cookie").exists()  # the cookie file beside the database, as the daemon makes it


# ---- the local_cluster fixture: marker, option, ini ----------------------------------------

INNER = '''
    import os

    import pytest
    import requests


    def served(cluster):
        (node,) = cluster.start_nodes("p", 1)
        return requests.get(node.url + "/which", timeout=5).text


    @pytest.mark.logonmesh(app="marked:create_app")
    def test_marker(local_cluster):
        assert served(local_cluster) == "marked"


    def test_option(local_cluster):
        assert served(local_cluster) == "optioned"


    @pytest.mark.logonmesh(cwd="sub")
    def test_cwd(local_cluster):
        assert (local_cluster.app, local_cluster.cwd) == ("optioned:create_app", os.path.abspath("sub"))


    @pytest.mark.logonmesh(application="marked:create_app")
    def test_unknown_keyword(local_cluster):
        pass
'''


def which_app(name: str) -> str:
    return textwrap.dedent(f'''
        from flask import Flask

        def create_app():
            app = Flask(__name__)
            app.add_url_rule("/which", "which", lambda: {name!r})
            return app
    ''')


def test_the_fixture_takes_the_app_from_the_marker_else_the_option_else_the_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=textwrap.dedent(INNER), marked=which_app("marked"),
                        optioned=which_app("optioned"))
    pytester.mkdir("sub")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--logonmesh-app", "optioned:create_app")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.logonmesh takes only the keywords app, cwd; got application*"])

    pytester.makeini("[pytest]\nlogonmesh_app = optioned:create_app\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "not unknown")
    result.assert_outcomes(passed=3)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.logonmesh(app=None, cwd=None)*"])
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--logonmesh-app=MODULE:FACTORY*", "*logonmesh_app *"])
