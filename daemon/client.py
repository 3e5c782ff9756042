"""The small client that the web process and the CLI use to talk to their daemon over ipc.

It is the only door into a daemon from outside: it speaks the control
protocol of ``daemon.control`` and follows the session feed of
``daemon.feed`` (``FeedSubscription``), both in the wire format of
``daemon.wire``, and imports nothing else of the daemon.  Each thread gets its own DEALER socket
(ZeroMQ sockets are not thread-safe); a request that times out closes its
socket and the next request opens a fresh one (the Lazy Pirate pattern), so
a daemon that restarts is picked up again by itself.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.kinds import Entry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 1000


class DaemonUnavailable(ConnectionError):
    """The daemon did not answer in time, or there is no socket to talk to."""


class WrongCookie(DaemonUnavailable):
    """A reply came but failed its signature check: this side and the daemon hold different cookies.

    Told apart from silence because the cure differs: a wrong cookie never
    heals by waiting, a paused or overloaded daemon does.
    """


class DaemonError(RuntimeError):
    """The daemon answered with an error: ``code`` is stable (``wire.ERROR_CODES``), the message is for people.

    Switch on ``code``, never on ``str(exc)``.
    """

    def __init__(self, message: str, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class DaemonClient:
    def __init__(self, ipc_path: str, cookie: bytes, name: str = "client",
                 timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.ipc_path = ipc_path
        self.timeout_ms = timeout_ms
        self._ctx: zmq.Context = zmq.Context.instance()
        self._codec = wire.Codec(cookie, name)
        self._codec_lock = threading.Lock()
        self._local = threading.local()
        self._ids = itertools.count(1)

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        """Send one request and wait for its reply; raise DaemonUnavailable (WrongCookie) or DaemonError."""
        if not os.path.exists(self.ipc_path):
            raise DaemonUnavailable(f"no daemon is running (no socket at {self.ipc_path})")
        if not os.access(self.ipc_path, os.R_OK | os.W_OK):
            raise DaemonUnavailable(f"no permission to use the daemon socket {self.ipc_path}")
        req_id = next(self._ids)
        with self._codec_lock:
            frame = self._codec.encode("req", {"id": req_id, "op": op, "args": args})
        sock = self._socket()
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            raise DaemonUnavailable("the daemon is not accepting requests") from None
        return self._await(sock, req_id, self.timeout_ms if timeout_ms is None else timeout_ms)

    def _await(self, sock: zmq.Socket, req_id: int, timeout_ms: int) -> Any:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        deadline = _now_ms() + timeout_ms
        while (left := deadline - _now_ms()) > 0:
            if not poller.poll(int(left)):  # whole ms, as pyzmq would truncate a float
                break
            try:
                env = self._codec.decode(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                continue
            except wire.WireError as exc:
                if exc.reason != "bad_signature":
                    continue
                self._reset()
                raise WrongCookie("the daemon answered, but its reply failed the signature check: "
                                  "the cookies differ") from None
            if env.type != "rep" or env.payload["id"] not in (req_id, 0):
                continue  # a late answer to an earlier, timed-out request
            if not env.payload["ok"]:
                raise DaemonError(env.payload["error"] or "error", env.payload["code"] or "internal")
            return env.payload["result"]
        self._reset()
        raise DaemonUnavailable(f"the daemon did not answer within {timeout_ms} ms")

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 100
            sock.connect(f"ipc://{self.ipc_path}")
            self._local.sock = sock
        return sock

    def _reset(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
            self._local.sock = None

    def close(self) -> None:
        self._reset()


@dataclass(frozen=True)
class FeedMessage:
    """One checked message of the session feed: a batch of changes, or a tick (the daemon is alive)."""

    type: str            # "sessions" or "tick"
    incarnation: int     # the daemon's; a new one means a restart: take a fresh snapshot
    seq: int             # rises by one per message: a gap means one was lost
    entries: list[Entry]


class FeedSubscription:
    """The daemon's session feed as its web follows it: a SUB over ipc, every frame verified and decoded here.

    One thread owns it (ZeroMQ sockets are not thread-safe).  The SUB keeps
    whatever arrives (no high-water mark here: the daemon's side is bounded)
    and reconnects by itself when the daemon restarts.
    """

    def __init__(self, path: str, cookie: bytes) -> None:
        self._key = wire.wire_key(cookie)
        self._sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        try:
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, 0)  # never drop here: the daemon's side is bounded
            self._sub.subscribe(b"")
            self._sub.connect(f"ipc://{path}")
        except BaseException:
            self._sub.close(linger=0)
            raise

    def receive(self, timeout_ms: int) -> FeedMessage | None:
        """The next message, waiting at most ``timeout_ms``; None on silence or a frame that fails its checks."""
        if not self._sub.poll(timeout_ms):
            return None
        frame = self._sub.recv()
        try:
            env = wire.decode(self._key, frame)
        except wire.WireError as exc:
            log.warning("session feed: refused a frame (%s)", exc.reason)
            return None
        if env.type not in ("sessions", "tick"):
            return None
        return FeedMessage(env.type, env.incarnation, env.seq, env.payload.get("entries", []))

    def close(self) -> None:
        self._sub.close(linger=0)


def _now_ms() -> float:
    return time.monotonic() * 1000
