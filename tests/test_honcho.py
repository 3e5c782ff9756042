"""`honcho start` runs the repository's Procfile as written: two healthy nodes, and a clean stop on SIGTERM.

It runs in a temporary copy of the Procfile and .env, so var/ and the cookie
are created there on first run, as on a fresh machine.  The ports come from a
second env file given after .env (honcho lets later files override earlier
ones, while .env itself would override the process environment), so the test
never collides with a cluster already running on 4001/4002.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from logonmesh.testing import eventually

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = ("node1_daemon", "node1_web", "node2_daemon", "node2_web")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # honcho itself sends SIGKILL after 5 s; seeing that is a failure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A short path in /tmp (ipc paths must stay under ~107 bytes) holding copies of Procfile and .env."""
    path = Path(tempfile.mkdtemp(prefix="lm-honcho-", dir="/tmp"))
    try:
        shutil.copy(ROOT / "Procfile", path / "Procfile")
        shutil.copy(ROOT / ".env", path / ".env")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Honcho:
    """honcho start as a subprocess, with its output in a file so the pids of its children can be read."""

    def __init__(self, cwd: Path, env_files: str) -> None:
        self.log_path = cwd / "honcho.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGONMESH_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-e", env_files],
                                          cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", self.output())]

    def cleanup(self) -> None:
        """Whatever happened, leave no process behind: honcho's children run in sessions of their own."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid in self.child_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def assert_healthy(url: str, name: str, peer: str) -> None:
    resp = requests.get(f"{url}/healthz", timeout=2)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"node": name, "daemon": True, "peers_up": [peer]}


def test_honcho_start_brings_up_two_nodes_and_stops_cleanly(app_dir: Path) -> None:
    ports = {"node1": free_port(), "node2": free_port()}
    (app_dir / "ports.env").write_text("".join(f"{n.upper()}_PORT={p}\n" for n, p in ports.items()))
    honcho = Honcho(app_dir, ".env,ports.env")
    try:
        def both_healthy() -> None:
            assert honcho.popen.poll() is None, f"honcho exited:\n{honcho.output()}"
            assert_healthy(f"http://127.0.0.1:{ports['node1']}", "node1", "node2")
            assert_healthy(f"http://127.0.0.1:{ports['node2']}", "node2", "node1")

        eventually(both_healthy, timeout=READY_TIMEOUT_S, interval=0.1)
        assert (app_dir / "var" / "cookie").exists()

        started = time.monotonic()
        honcho.popen.send_signal(signal.SIGTERM)
        honcho.popen.wait(STOP_TIMEOUT_S)
        took = time.monotonic() - started
        out = honcho.output()
        for name in PROCESSES:
            assert re.search(rf"{name}\.\d+\s+stopped \(rc=0\)", out), f"{name} did not exit 0:\n{out}"
        assert "SIGKILL" not in out and "Traceback" not in out, out
        assert took < 5.0, f"stopping took {took:.1f} s"
        assert not list((app_dir / "var" / "run").glob("*.ipc")), "a daemon left its ipc socket behind"
    finally:
        honcho.cleanup()
