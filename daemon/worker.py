"""Blocking work (SQLite) on a thread of its own, results handed back to the event loop.

The event loop must never wait on the database: a busy shared file can hold a
writer for seconds, and a stalled loop misses heartbeats.  Jobs run one at a
time on this thread, which owns its own connection; each result is queued and
the loop is woken through an inproc socket that it polls like any other.

The thread cannot die quietly, because a daemon whose worker is gone would go
on heartbeating while no registration is ever stored and its registry row
expires.  A job's own exception is its result, handed to the loop.  Anything
else that fails on the thread (opening the database, closing it, the wake
socket) is logged with its cause and the thread starts again after a backoff
(``daemon.restart``: 0.25 s, doubling, at most 4 s).  After 5 such failures
within 60 s it gives up: every queued job is answered with the error, and the
next ``drain()`` (or ``submit()``) on the loop raises ``WorkerGaveUp``.  That
is a ``SystemExit``, so it passes the loop's per-handler ``except Exception``,
the daemon leaves the cluster cleanly through ``run()``'s ``finally``, and the
process exits 1 with one line on stderr for its supervisor to act on.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
from typing import Any, Callable

import zmq

from logonmesh.daemon.restart import Restarts

log = logging.getLogger(__name__)
_ids = itertools.count()

Job = Callable[[Any], Any]
Done = Callable[[Any, "BaseException | None"], None]


class WorkerGaveUp(SystemExit):
    """The worker thread failed too often: the daemon must stop (exit 1, the message on stderr)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"logonmesh: {message}")
        self.message = message


class Worker:
    def __init__(self, ctx: zmq.Context, open_resource: Callable[[], Any],
                 restarts: Restarts | None = None) -> None:
        self.endpoint = f"inproc://logonmesh-worker-{next(_ids)}"
        self.wake = ctx.socket(zmq.PULL)
        self.wake.linger = 0
        self.wake.bind(self.endpoint)
        self._ctx = ctx
        self._open = open_resource
        self._restarts = restarts or Restarts()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque = collections.deque()
        self._closing = threading.Event()
        self.failure: WorkerGaveUp | None = None
        self.restarted = 0
        self.pending = 0
        self._thread = threading.Thread(target=self._run, name="logonmesh-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job, done: Done) -> None:
        """Run ``job(resource)`` off the loop; later call ``done(result, error)`` on the loop."""
        if self.failure is not None:
            raise self.failure
        self.pending += 1
        self._jobs.put((job, done))

    def drain(self) -> None:
        """On the loop: deliver every finished job; raise WorkerGaveUp once the thread has given up."""
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self._done:
            done, result, error = self._done.popleft()
            self.pending -= 1
            done(result, error)
        if self.failure is not None:
            raise self.failure

    def close(self, timeout: float = 1.0) -> None:
        self._closing.set()
        self._jobs.put(None)
        self._thread.join(timeout)
        self.wake.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the worker's own thread ------------------------------------------

    def _run(self) -> None:
        """Serve jobs until close(); a failure is logged with its cause, then a restart or giving up."""
        while not self._closing.is_set():
            try:
                self._serve()
            except Exception as exc:
                if self._closing.is_set():
                    log.warning("worker: failed while closing: %r", exc)
                    return
                delay = self._restarts.failed()
                if delay is None:
                    self._give_up(exc)
                    return
                self.restarted += 1
                log.error("worker thread failed (%s); restarting in %.2f s (%s)", _cause(exc), delay,
                          self._restarts.describe(), exc_info=exc)
                self._closing.wait(delay)
            else:
                return  # close() asked us to stop

    def _serve(self) -> None:
        """One life of the thread: open the resource, run jobs until the sentinel, close it."""
        push = self._ctx.socket(zmq.PUSH)
        try:
            push.linger = 0
            push.connect(self.endpoint)
            resource = self._open()
            try:
                while (item := self._jobs.get()) is not None:
                    job, done = item
                    try:
                        result, error = job(resource), None
                    except Exception as exc:  # handed to the loop, which decides
                        result, error = None, exc
                    self._deliver(push, done, result, error)
            finally:
                close = getattr(resource, "close", None)
                if close is not None:
                    close()
        finally:
            push.close()

    def _deliver(self, push: zmq.Socket, done: Done, result: Any, error: BaseException | None) -> None:
        self._done.append((done, result, error))
        try:
            push.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # the loop is already due to wake

    def _give_up(self, exc: Exception) -> None:
        """Answer every queued job with the failure and wake the loop, whose next drain() stops the daemon."""
        failure = WorkerGaveUp(f"the database worker gave up after {self._restarts.describe()} "
                               f"(last: {_cause(exc)}); stopping the daemon")
        log.critical("%s", failure.message, exc_info=exc)
        self.failure = failure  # first: a submit() from now on raises instead of queueing
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._done.append((item[1], None, failure))
        push = self._ctx.socket(zmq.PUSH)
        try:
            push.linger = 0
            push.connect(self.endpoint)
            push.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the loop is closing or already due to wake
        finally:
            push.close()


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
