"""The harness's clock skew (issue 14): real nodes under libfaketime, and the nodes left alone.

One cluster serves the module: ``ok1`` with the real clock and ``fast1`` 300 s
ahead, each a daemon and a web.  A test that steps ``fast1`` puts it back; a
test that needs a node of its own (a stop and a start) adds a daemon-only one.
The daemon's clock is read from its ``status`` (``wall_ms``), the web's from
its HTTP ``Date`` header (whole seconds).
"""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import time
from typing import Iterator

import pytest
import requests

from logonmesh import testing
from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import ClockSkewUnavailable, LocalCluster, Node, faketime_spec

AHEAD_S = 300.0
CLOSE_S = 2.0   # a clock "shows" an offset to within this (an ipc or HTTP round trip, whole-second Dates)
STAY_UP_S = 2.0  # twenty heartbeats of 100 ms, against a down-after of three


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    with LocalCluster() as cluster:
        cluster.start_nodes("ok", 1)
        cluster.start_nodes("fast", 1, clock_offset_s=AHEAD_S)
        yield cluster


@pytest.fixture
def ok(cluster: LocalCluster) -> Node:
    return cluster.node("ok1")


@pytest.fixture
def fast(cluster: LocalCluster) -> Iterator[Node]:
    node = cluster.node("fast1")
    try:
        yield node
    finally:
        if node.clock_offset_s != AHEAD_S:
            node.set_clock(AHEAD_S)


def daemon_offset_s(node: Node) -> float:
    """The daemon's wall clock minus the harness's, from one status answer."""
    before = time.time()
    wall_ms = node.call("status")["wall_ms"]
    return wall_ms / 1000 - (before + time.time()) / 2


def web_offset_s(node: Node) -> float:
    """The web's wall clock minus the harness's, from the Date header (which drops the fraction)."""
    before = time.time()
    date = requests.get(f"{node.url}/healthz", timeout=2).headers["Date"]
    return email.utils.parsedate_to_datetime(date).timestamp() + 0.5 - (before + time.time()) / 2


def assert_clock(node: Node, offset_s: float) -> None:
    seen = daemon_offset_s(node)
    assert abs(seen - offset_s) <= CLOSE_S, f"{node.name} daemon at {seen:+.3f} s, want {offset_s:+.1f} s"
    if node.web is not None:
        seen = web_offset_s(node)
        assert abs(seen - offset_s) <= CLOSE_S, f"{node.name} web at {seen:+.3f} s, want {offset_s:+.1f} s"


def environ(pid: int | None) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


# ---- real nodes ------------------------------------------------------------------

def test_a_node_started_ahead_shows_its_clock_ahead_and_the_others_do_not(ok: Node, fast: Node) -> None:
    assert fast.clock_offset_s == AHEAD_S and ok.clock_offset_s == 0.0
    assert_clock(fast, AHEAD_S)
    assert_clock(ok, 0.0)


def test_the_skewed_node_sees_its_peers_and_stays_up(cluster: LocalCluster, ok: Node, fast: Node) -> None:
    """Liveness runs on the monotonic clock, which libfaketime leaves alone: nobody goes down."""
    deadline = time.monotonic() + STAY_UP_S
    while time.monotonic() < deadline:
        assert cluster.views() == {"ok1": {"fast1"}, "fast1": {"ok1"}}
        time.sleep(0.1)
    assert fast.daemon.alive and fast.web is not None and fast.web.alive


def test_set_clock_steps_a_running_node_and_both_processes_follow(ok: Node, fast: Node) -> None:
    pid = fast.daemon.pid
    fast.set_clock(-AHEAD_S)  # waits until the daemon and the web show it
    assert fast.clock_offset_s == -AHEAD_S
    assert_clock(fast, -AHEAD_S)
    assert fast.daemon.pid == pid, "a step is not a restart"
    assert_clock(ok, 0.0)


def test_set_clock_while_stopped_is_taken_at_the_next_start(cluster: LocalCluster) -> None:
    """A node that was never skewed gets libfaketime from its next start on, at the offset set meanwhile."""
    late, = cluster.start_nodes("late", 1, web=False)
    assert "LD_PRELOAD" not in environ(late.daemon.pid)
    late.stop()
    late.set_clock(-600.0)
    late.start()
    cluster.wait_ready([late])
    assert_clock(late, -600.0)
    assert environ(late.daemon.pid)["FAKETIME_TIMESTAMP_FILE"] == late.clock_file
    late.stop()
    late.set_clock(0.0)  # still under libfaketime (so it can be stepped while it runs), at the real time
    late.restart()
    assert_clock(late, 0.0)
    late.set_clock(42.5)
    assert_clock(late, 42.5)
    late.stop()


def test_a_node_never_skewed_runs_without_libfaketime(ok: Node, fast: Node) -> None:
    for proc in ok.procs:
        env = environ(proc.pid)
        assert not {"LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE"} & set(env), f"{proc.label}: {sorted(env)}"
    assert not os.path.exists(ok.clock_file)
    for proc in fast.procs:
        env = environ(proc.pid)
        assert testing.libfaketime() in env["LD_PRELOAD"].split()
        assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1" and env["FAKETIME_TIMESTAMP_FILE"] == fast.clock_file


def test_a_running_node_without_libfaketime_cannot_be_stepped(ok: Node) -> None:
    with pytest.raises(ClockSkewUnavailable, match="ok1 runs without libfaketime"):
        ok.set_clock(5.0)
    ok.set_clock(0.0)  # no step: nothing to refuse
    assert ok.clock_offset_s == 0.0 and not os.path.exists(ok.clock_file)


def test_the_faketime_files_go_with_the_cluster_directory() -> None:
    with LocalCluster() as cluster:
        node, = cluster.start_nodes("gone", 1, web=False, clock_offset_s=-5.0)
        with open(node.clock_file) as f:
            assert f.read() == "-5.000000s\n"
    assert not os.path.exists(cluster.dir)


def test_sleep_works_in_a_node_under_libfaketime() -> None:
    """``python -m logonmesh`` replaces time.sleep (which libfaketime 0.9.10 breaks) before anything runs.

    The command is run as a node is, then the same interpreter sleeps and
    waits on a child with a timeout (which sleeps too).
    """
    script = ("import runpy, subprocess, sys, time\n"
              "sys.argv = ['logonmesh', '--help']\n"
              "try:\n    runpy.run_module('logonmesh', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "t = time.monotonic(); time.sleep(0.2); time.sleep(0); slept = time.monotonic() - t\n"
              "child = subprocess.Popen(['sleep', '5'])\n"
              "try:\n    child.wait(0.1)\nexcept subprocess.TimeoutExpired:\n    child.kill()\n"
              "print(round(slept, 2), round(time.time()))\n")
    with LocalCluster() as cluster:
        node = Node(cluster, "shim", web=False, clock_offset_s=AHEAD_S)  # never started: only its environment
        cluster.nodes.append(node)
        done = subprocess.run([sys.executable, "-c", script], env=node._env(), capture_output=True, text=True,
                              timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    slept, clock = done.stdout.split()[-2:]
    assert 0.2 <= float(slept) < 1.0
    assert abs(int(clock) - time.time() - AHEAD_S) <= CLOSE_S


# ---- pure -------------------------------------------------------------------------

@pytest.mark.parametrize(("offset", "spec"), [
    (300, "+300.000000s"), (-300.0, "-300.000000s"), (-0.5, "-0.500000s"), (0.25, "+0.250000s"),
    (-0.0, "+0.000000s"), (1.2345678, "+1.234568s"),
])
def test_offsets_are_written_as_libfaketime_reads_them(offset: float, spec: str) -> None:
    assert faketime_spec(offset) == spec


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), -float("inf"), True, "300"])
def test_an_offset_that_is_not_a_finite_number_is_refused(offset: object) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        faketime_spec(offset)  # type: ignore[arg-type]


def test_missing_libfaketime_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testing.LIBFAKETIME_ENV, raising=False)
    monkeypatch.setattr(testing, "LIBFAKETIME_PATHS", ("/nonexistent/libfaketime.so.1",))
    with pytest.raises(ClockSkewUnavailable, match="apt-get install faketime"):
        testing.libfaketime()
    with LocalCluster() as cluster:
        with pytest.raises(ClockSkewUnavailable, match="apt-get install faketime"):
            cluster.start_nodes("none", 1, clock_offset_s=1.0)
        assert cluster.nodes == []
    monkeypatch.setenv(testing.LIBFAKETIME_ENV, "/nonexistent/libfaketime.so.1")
    with pytest.raises(ClockSkewUnavailable, match="LOGONMESH_LIBFAKETIME=/nonexistent"):
        testing.libfaketime()
