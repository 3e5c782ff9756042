"""Blocking work (SQLite) on a thread of its own, results handed back to the event loop.

The event loop must never wait on the database: a busy shared file can hold a
writer for seconds, and a stalled loop misses heartbeats.  Jobs run one at a
time on this thread, which owns its own connection; each result is queued and
the loop is woken through an inproc socket that it polls like any other.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
from typing import Any, Callable

import zmq

log = logging.getLogger(__name__)
_ids = itertools.count()


class Worker:
    def __init__(self, ctx: zmq.Context, open_resource: Callable[[], Any]) -> None:
        self.endpoint = f"inproc://logonmesh-worker-{next(_ids)}"
        self.wake = ctx.socket(zmq.PULL)
        self.wake.linger = 0
        self.wake.bind(self.endpoint)
        self._ctx = ctx
        self._open = open_resource
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque = collections.deque()
        self.pending = 0
        self._thread = threading.Thread(target=self._run, name="logonmesh-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[Any], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``job(resource)`` off the loop; later call ``done(result, error)`` on the loop."""
        self.pending += 1
        self._jobs.put((job, done))

    def drain(self) -> None:
        """On the loop: deliver every finished job."""
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self._done:
            done, result, error = self._done.popleft()
            self.pending -= 1
            done(result, error)

    def close(self, timeout: float = 1.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)
        self.wake.close()

    def _run(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
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
                self._done.append((done, result, error))
                try:
                    push.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the loop is already due to wake
        finally:
            push.close()
            close = getattr(resource, "close", None)
            if close is not None:
                close()
