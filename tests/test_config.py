"""Settings (daemon/config.py) and how the daemon command reports a bad one.

A bad value must stop the daemon with exactly one line on stderr that names
the flag or the environment variable, exit code 2 and no traceback.  The
subprocess tests run the real ``python -m logonmesh daemon``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from logonmesh.daemon import config
from logonmesh.daemon.client import DaemonClient
from logonmesh.daemon.config import IPC_PATH_MAX, ConfigError
from logonmesh.testing import eventually

# ---- in process ------------------------------------------------------------------


@pytest.mark.parametrize("cli,env,names", [
    ({"name": "BAD!"}, {}, ["--name", "LOGONMESH_NODE"]),
    ({"name": "x" * 33}, {}, ["--name"]),
    ({}, {"LOGONMESH_NODE": "Upper"}, ["LOGONMESH_NODE", "--name"]),
    ({"heartbeat_ms": "0"}, {}, ["--heartbeat-ms"]),
    ({}, {"LOGONMESH_HEARTBEAT_MS": "abc"}, ["LOGONMESH_HEARTBEAT_MS"]),
    ({"down_after": "-1"}, {}, ["--down-after"]),
    ({"discovery_ms": "1.5"}, {}, ["--discovery-ms"]),
    ({"session_ttl_s": "soon"}, {}, ["--session-ttl"]),
    ({"port": "70000"}, {}, ["--port"]),
    ({"db": ""}, {}, ["--db"]),
])
def test_bad_values_name_their_setting(cli, env, names):
    with pytest.raises(ConfigError) as info:
        config.load(cli, env)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_flag_beats_environment_beats_default():
    s = config.load({"heartbeat_ms": "250"}, {"LOGONMESH_HEARTBEAT_MS": "500", "LOGONMESH_DOWN_AFTER": "7"})
    assert (s.heartbeat_ms, s.down_after, s.discovery_ms) == (250, 7, 2000)
    assert s.down_after_ms == 250 * 7


def test_a_flag_overrides_a_bad_environment_value():
    assert config.load({"heartbeat_ms": "5"}, {"LOGONMESH_HEARTBEAT_MS": "junk"}).heartbeat_ms == 5


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = config.load({"name": "n1"}, {})
    assert s.db == str(tmp_path / "var" / "cluster.db")
    assert s.run_dir == str(tmp_path / "var" / "run")
    assert s.ipc_path == str(tmp_path / "var" / "run" / "n1.ipc")


def test_name_is_required_only_when_asked():
    assert config.load({}, {}).name is None
    with pytest.raises(ConfigError, match="--name / LOGONMESH_NODE"):
        config.load({}, {}, require_name=True)


def _run_dir_for(ipc_bytes: int, name: str = "n1") -> str:
    base = "/tmp/"
    return base + "d" * (ipc_bytes - len(base) - len(f"/{name}.ipc"))


def test_ipc_path_limit():
    ok = config.load({"name": "n1", "run_dir": _run_dir_for(IPC_PATH_MAX)}, {}, require_name=True)
    assert len(ok.ipc_path.encode()) == IPC_PATH_MAX == 107
    with pytest.raises(ConfigError) as info:
        config.load({"name": "n1", "run_dir": _run_dir_for(IPC_PATH_MAX + 1)}, {}, require_name=True)
    assert "--run-dir" in str(info.value) and "107" in str(info.value) and "\n" not in str(info.value)


def test_cookie_file_is_created_private_beside_the_db_and_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default var/, the one folder made on first use
    db = tmp_path / "var" / "cluster.db"
    s = config.load({"name": "n1"}, {})
    first = config.resolve_cookie(s)
    path = tmp_path / "var" / "cookie"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32 and path.read_text().strip().encode() == first
    assert config.resolve_cookie(s) == first
    assert config.resolve_cookie(config.load({"name": "n2", "db": str(db)}, {})) == first
    assert not list(path.parent.glob(".cookie.*")), "the temp file must not be left behind"


def test_cookie_files_differ_between_clusters(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = config.resolve_cookie(config.load({"db": str(tmp_path / "a" / "c.db")}, {}))
    b = config.resolve_cookie(config.load({"db": str(tmp_path / "b" / "c.db")}, {}))
    assert a != b


def test_a_given_db_whose_folder_is_missing_is_refused(tmp_path, monkeypatch):
    """A typo in --db must not start a new, isolated cluster: the flag and the variable both say so."""
    monkeypatch.chdir(tmp_path)
    typo = "no/such/dir/cluster.db"
    for cli, env, where in (({"db": typo}, {}, "--db / LOGONMESH_DB"), ({}, {"LOGONMESH_DB": typo}, "LOGONMESH_DB")):
        with pytest.raises(ConfigError) as info:
            config.load(cli, env)
        assert str(info.value).startswith(where) and str(tmp_path / "no" / "such" / "dir") in str(info.value)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "no").exists()
    assert config.load({}, {}).db == str(tmp_path / "var" / "cluster.db")  # the default: made on first use
    assert config.load({"db": "var/cluster.db"}, {}).db == str(tmp_path / "var" / "cluster.db")  # given, same
    (tmp_path / "there").mkdir()
    assert config.load({"db": "there/c.db"}, {}).db == str(tmp_path / "there" / "c.db")


def test_cookie_setting_wins_and_no_file_is_made(tmp_path):
    s = config.load({"db": str(tmp_path / "c.db")}, {"LOGONMESH_COOKIE": "shared-secret"})
    assert config.resolve_cookie(s) == b"shared-secret"
    assert not (tmp_path / "cookie").exists()


def test_empty_cookie_file_is_a_config_error(tmp_path):
    (tmp_path / "cookie").write_text("\n")
    with pytest.raises(ConfigError, match="--cookie / LOGONMESH_COOKIE"):
        config.resolve_cookie(config.load({"db": str(tmp_path / "c.db")}, {}))


def test_run_dir_is_made_0700_even_when_it_existed_open(tmp_path):
    run = tmp_path / "a" / "run"
    config.ensure_run_dir(config.load({"run_dir": str(run)}, {}))
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    os.chmod(run, 0o755)
    config.ensure_run_dir(config.load({"run_dir": str(run)}, {}))
    assert stat.S_IMODE(run.stat().st_mode) == 0o700


# ---- the real command -----------------------------------------------------------


@pytest.fixture
def short_dir():
    """Under /tmp, so ipc paths stay well below the 107-byte limit."""
    path = tempfile.mkdtemp(prefix="lmcfg-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def base_env(short_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGONMESH_")}
    env.update(LOGONMESH_DB=os.path.join(short_dir, "cluster.db"), LOGONMESH_RUN_DIR=os.path.join(short_dir, "run"),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_daemon(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logonmesh", "daemon", *argv], env=env, capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *names: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("logonmesh: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


BAD = [
    (["--name", "BAD!"], {}, ["--name", "LOGONMESH_NODE"]),
    ([], {}, ["--name", "LOGONMESH_NODE", "required"]),
    ([], {"LOGONMESH_NODE": "has space"}, ["LOGONMESH_NODE"]),
    (["--name", "n1", "--heartbeat-ms", "0"], {}, ["--heartbeat-ms"]),
    (["--name", "n1"], {"LOGONMESH_HEARTBEAT_MS": "abc"}, ["LOGONMESH_HEARTBEAT_MS"]),
    (["--name", "n1", "--down-after=-3"], {}, ["--down-after"]),
    (["--name", "n1"], {"LOGONMESH_DISCOVERY_MS": "1e3"}, ["LOGONMESH_DISCOVERY_MS"]),
    (["--name", "n1", "--session-ttl", "forever"], {}, ["--session-ttl"]),
    (["--name", "n1", "--run-dir", "/tmp/" + "r" * 110], {}, ["--run-dir", "107"]),
]


@pytest.mark.parametrize("argv,env,names", BAD, ids=[" ".join(a) + repr(e) for a, e, _ in BAD])
def test_bad_setting_is_one_line_and_exit_2(short_dir, argv, env, names):
    proc = run_daemon(argv, base_env(short_dir, **env))
    assert_one_line(proc, 2, *names)
    assert not os.path.exists(os.path.join(short_dir, "run", "n1.ipc"))


def test_empty_cookie_file_is_one_line_and_exit_2(short_dir):
    with open(os.path.join(short_dir, "cookie"), "w"):
        pass
    assert_one_line(run_daemon(["--name", "n1"], base_env(short_dir)), 2, "LOGONMESH_COOKIE", "empty")


@pytest.mark.parametrize("what", ["db is a directory", "db under a file", "bad bind address"])
def test_unusable_resources_are_one_line_and_exit_1(short_dir, what):
    env = base_env(short_dir, LOGONMESH_COOKIE="c")
    argv = ["--name", "n1"]
    if what == "db is a directory":
        os.mkdir(os.path.join(short_dir, "dbdir"))
        argv += ["--db", os.path.join(short_dir, "dbdir")]
    elif what == "db under a file":
        argv += ["--db", "/dev/null/cluster.db"]
        env.pop("LOGONMESH_COOKIE")
    else:
        argv += ["--bind", "999.1.1.1"]
    assert_one_line(run_daemon(argv, env), 1)
    assert not os.path.exists(os.path.join(short_dir, "run", "n1.ipc"))


@pytest.mark.parametrize("command", ["daemon", "web", "peers"])
def test_a_mistyped_db_is_one_line_and_exit_2_everywhere(short_dir, command):
    """The daemon, the web process and the CLI share the check: nothing starts and no folder is made."""
    env = base_env(short_dir, LOGONMESH_COOKIE="c")
    proc = subprocess.run([sys.executable, "-m", "logonmesh", command, "--name", "n1", "--db", "no/such/cluster.db"]
                          if command != "peers" else [sys.executable, "-m", "logonmesh", command, "--db",
                                                      "no/such/cluster.db"],
                          env=env, cwd=short_dir, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    line = assert_one_line(proc, 2, "--db / LOGONMESH_DB", os.path.join(short_dir, "no", "such"), "does not exist")
    assert "var/cluster.db" in line
    assert not os.path.exists(os.path.join(short_dir, "no"))


def start_daemon(name: str, env: dict[str, str]) -> subprocess.Popen:
    """With the usual umask (022), so a file the daemon does not make private on purpose is world-readable."""
    return subprocess.Popen([sys.executable, "-m", "logonmesh", "daemon", "--name", name], env=env, umask=0o022,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def test_cookie_file_and_run_dir_made_by_real_daemons(short_dir):
    """No cookie given: the first daemon writes var/cookie (0600) beside the db, the second reuses it.

    The database holds password hashes: it and its WAL and shared-memory files are born 0600 as well.
    """
    env = base_env(short_dir, LOGONMESH_HEARTBEAT_MS="100", LOGONMESH_DISCOVERY_MS="200")
    run_dir, cookie_path = os.path.join(short_dir, "run"), os.path.join(short_dir, "cookie")
    procs = [start_daemon("c1", env)]
    try:
        eventually(lambda: os.stat(os.path.join(run_dir, "c1.ipc")), timeout=15)
        assert stat.S_IMODE(os.stat(cookie_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.join(run_dir, "c1.ipc")).st_mode) == 0o600
        db = env["LOGONMESH_DB"]
        modes = {path: stat.S_IMODE(os.stat(path).st_mode) for path in (db, f"{db}-wal", f"{db}-shm")}
        assert modes == dict.fromkeys(modes, 0o600)
        cookie = open(cookie_path, "rb").read().strip()
        procs.append(start_daemon("c2", env))
        clients = [DaemonClient(os.path.join(run_dir, f"{n}.ipc"), cookie) for n in ("c1", "c2")]

        def both_up() -> None:
            assert clients[0].call("ping")["peers_up"] == ["c2"]
            assert clients[1].call("ping")["peers_up"] == ["c1"]

        eventually(both_up, timeout=15)
        assert open(cookie_path, "rb").read().strip() == cookie
        for c in clients:
            c.close()
    finally:
        for p in procs:
            p.terminate()
        codes = [p.wait(10) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs]


def test_every_option_is_a_setting_with_the_option_s_default() -> None:
    """One definition: a new option that Settings lacks would be parsed and then silently dropped."""
    from dataclasses import fields as dataclass_fields

    from logonmesh.daemon.config import OPTIONS, Settings
    assert {f.name for f in dataclass_fields(Settings)} == {o.name for o in OPTIONS}
    assert all(getattr(Settings(), o.name) == o.default for o in OPTIONS)
