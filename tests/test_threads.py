"""Threads that cannot die quietly: the daemon's worker and the web's session mirror.

The restart policy is pure logic with a fake clock.  The worker and the mirror
are driven in-process with a resource that fails on purpose (the only way to
make a thread fail on cue), and one real daemon shows what an operator sees
when its worker gives up: the causes in the log, one line on stderr, exit 1.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.restart import Restarts
from logonmesh.daemon.worker import Worker, WorkerGaveUp
from logonmesh.testing import LocalCluster, eventually
from logonmesh.flask.mirror import SessionMirror

QUICK = dict(limit=3, window_s=60.0, first_delay_s=0.01, max_delay_s=0.05)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the policy ------------------------------------------------------------

def test_restarts_back_off_doubling_up_to_the_cap_then_give_up() -> None:
    restarts = Restarts(limit=5, window_s=60, first_delay_s=0.25, max_delay_s=0.6, clock=FakeClock())
    assert [restarts.failed() for _ in range(5)] == [0.25, 0.5, 0.6, 0.6, None]
    assert restarts.describe() == "5 failures in 60 s"


def test_restarts_forgive_failures_older_than_the_window() -> None:
    clock = FakeClock()
    restarts = Restarts(limit=3, window_s=10, first_delay_s=1, max_delay_s=8, clock=clock)
    assert restarts.failed() == 1 and restarts.failed() == 2
    clock.now += 11
    assert restarts.failed() == 1  # the two old ones no longer count
    assert restarts.failed() == 2
    assert restarts.failed() is None


# ---- the worker --------------------------------------------------------------

class Opener:
    """A resource opener that fails its first ``failures`` calls, like a database briefly unopenable."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.closed = 0

    def __call__(self) -> "Opener":
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError("unable to open database file")
        return self

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def ctx() -> Any:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def run_job(worker: Worker, job: Any) -> list:
    """Submit a job and drain the worker as the loop would until it is answered."""
    answers: list = []
    worker.submit(job, lambda result, error: answers.append((result, error)))

    def answered() -> list:
        worker.drain()
        assert answers
        return answers
    return eventually(answered, timeout=5)


def test_a_worker_that_cannot_open_its_resource_logs_the_cause_and_restarts(ctx, caplog) -> None:
    opener = Opener(failures=2)
    caplog.set_level(logging.ERROR, logger="logonmesh.daemon.worker")
    worker = Worker(ctx, opener, Restarts(**QUICK))
    try:
        assert run_job(worker, lambda res: res is opener) == [(True, None)]
        assert worker.restarted == 2 and worker.alive and worker.pending == 0
        failed = [r for r in caplog.records if "worker thread failed" in r.getMessage()]
        assert len(failed) == 2
        assert "OperationalError: unable to open database file" in failed[0].getMessage()
        assert failed[0].exc_info is not None  # the traceback of the cause is in the log
    finally:
        worker.close()
    assert not worker.alive and opener.closed == 1


def test_a_failing_job_is_its_result_not_a_restart(ctx) -> None:
    worker = Worker(ctx, Opener(failures=0), Restarts(**QUICK))
    try:
        [(result, error)] = run_job(worker, lambda res: 1 / 0)
        assert result is None and isinstance(error, ZeroDivisionError)
        assert worker.restarted == 0 and worker.alive
    finally:
        worker.close()


def test_a_worker_that_keeps_failing_gives_up_and_stops_the_loop(ctx, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="logonmesh.daemon.worker")
    answers: list = []
    worker = Worker(ctx, Opener(failures=10**6), Restarts(**QUICK))
    try:
        worker.submit(lambda res: "never", lambda result, error: answers.append((result, error)))

        def gave_up() -> WorkerGaveUp:
            try:
                worker.drain()
            except WorkerGaveUp as exc:
                return exc
            raise AssertionError("the worker has not given up yet")
        failure = eventually(gave_up, timeout=5)
        assert failure.code == ("logonmesh: the database worker gave up after 3 failures in 60 s "
                                "(last: OperationalError: unable to open database file); stopping the daemon")
        assert isinstance(failure, SystemExit)  # passes the loop's per-handler `except Exception`
        assert answers == [(None, failure)] and worker.pending == 0  # the queued job was answered
        eventually(lambda: not worker.alive, timeout=2)
        with pytest.raises(WorkerGaveUp):
            worker.submit(lambda res: None, lambda result, error: None)
        assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "CRITICAL"]
    finally:
        worker.close()


WORKER_CANNOT_OPEN = """
import sqlite3, sys, threading
from logonmesh.daemon import node
opened = node.Daemon._resources
def resources(self):
    # The boot opens the database on the main thread and succeeds; the worker's own opens fail.
    if threading.current_thread().name == "logonmesh-worker":
        raise sqlite3.OperationalError("unable to open database file")
    return opened(self)
node.Daemon._resources = resources
from logonmesh.cli import main
main(["daemon"], prog_name="logonmesh")
"""


def test_a_daemon_whose_worker_cannot_open_the_database_exits_1_with_one_line() -> None:
    with LocalCluster() as cluster:
        env = dict(cluster.env, LOGONMESH_NODE="w1")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", WORKER_CANNOT_OPEN], env=env, capture_output=True,
                              text=True, timeout=60)
        took = time.monotonic() - started
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, proc.stderr
        assert lines[-1] == ("logonmesh: the database worker gave up after 5 failures in 60 s "
                             "(last: OperationalError: unable to open database file); stopping the daemon")
        assert proc.stderr.count("worker thread failed (OperationalError: unable to open database file); "
                                 "restarting in") == 4
        assert "node w1 up" in proc.stderr and "node w1 leaving the cluster" in proc.stderr
        assert "Traceback" in proc.stderr  # the cause's traceback is logged, above the one-line verdict
        assert not os.path.exists(os.path.join(cluster.run_dir, "w1.ipc"))  # it left cleanly
        assert took < 30  # 0.25 + 0.5 + 1 + 2 s of backoff, plus start and stop


# ---- the mirror ----------------------------------------------------------------

class Snapshots:
    """The daemon client's snapshot call: malformed ``bad`` times (a bug on either side), then valid."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.calls = 0

    def call(self, op: str, **_: Any) -> dict:
        assert op == "sessions_snapshot"
        self.calls += 1
        if self.calls <= self.bad:
            return {"seq": 0}  # no "entries": the mirror's thread fails on it
        return {"entries": [], "incarnation": 7, "seq": 0}


class QuickMirror(SessionMirror):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gave_up: list[str] = []

    def restarts(self) -> Restarts:
        return Restarts(**QUICK)

    def give_up(self, message: str, exc: Exception) -> None:
        self.gave_up.append(message)


@pytest.fixture
def feed(tmp_path, ctx) -> Any:
    """A real PUB where the daemon's feed would be, and an ipc path that exists (a live daemon)."""
    short = f"/tmp/lm-thr-{os.getpid()}-{threading.get_ident() % 10000}"
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"ipc://{short}.feed")
    ipc = tmp_path / "daemon.ipc"
    ipc.touch()
    yield pub, f"{short}.feed", str(ipc)
    pub.close()
    if os.path.exists(f"{short}.feed"):
        os.unlink(f"{short}.feed")


def follow(feed: Any, snapshots: Snapshots) -> QuickMirror:
    pub, feed_path, ipc = feed
    mirror = QuickMirror(feed_path, ipc, b"cookie", snapshots, stale_after_s=5.0)
    mirror.start()
    codec = wire.Codec(b"cookie", "d1", 7)

    def ticks() -> None:  # the daemon ticks every heartbeat; each one makes the mirror try again
        pub.send(codec.encode("tick", {}))
    return mirror, ticks


def test_a_mirror_that_fails_logs_the_cause_restarts_and_is_trusted_again(feed, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="logonmesh.flask.mirror")
    snapshots = Snapshots(bad=2)
    mirror, tick = follow(feed, snapshots)
    try:
        def trusted() -> None:
            tick()
            assert mirror.current()
        eventually(trusted, timeout=5)
        failed = [r for r in caplog.records if "session mirror failed" in r.getMessage()]
        assert len(failed) == 2 and "KeyError: 'entries'" in failed[0].getMessage()
        assert mirror.gave_up == [] and mirror._thread.is_alive()
    finally:
        mirror.close()


def test_a_mirror_that_keeps_failing_gives_up_and_is_never_trusted(feed) -> None:
    mirror, tick = follow(feed, Snapshots(bad=10**6))
    try:
        def gave_up() -> None:
            tick()
            assert mirror.gave_up
        eventually(gave_up, timeout=5)
        assert mirror.gave_up == ["the session mirror gave up after 3 failures in 60 s "
                                  "(last: KeyError: 'entries'); stopping the web"]
        assert not mirror.current()
        eventually(lambda: not mirror._thread.is_alive(), timeout=2)
    finally:
        mirror.close()


def test_purge_while_request_threads_insert_never_raises() -> None:
    mirror = SessionMirror("/nonexistent.feed", "/nonexistent.ipc", b"cookie", None, stale_after_s=1.0)
    past = int(time.time() * 1000) - 1000
    mirror._sessions.update({f"old-{i}": ("u", "uid", past) for i in range(50_000)})
    stop = threading.Event()
    inserted = [0] * 4

    def insert(n: int) -> None:
        while not stop.is_set():
            inserted[n] += 1
            mirror.revoked(f"t-{n}-{inserted[n]}", past + 10**9)

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            mirror._purge()
            mirror._sessions.update({f"old-{i}": ("u", "uid", past) for i in range(50_000)})
    finally:
        stop.set()
        for t in threads:
            t.join()
    mirror._purge()
    assert not any(token.startswith("old-") for token in mirror._sessions)
    assert all(inserted) and all(found[2] > past for found in mirror._sessions.values())
