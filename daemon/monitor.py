"""Live zmq socket events of one daemon, published for ``logonmesh monitor``.

libzmq reports connects, disconnects, retries and handshake failures of a
socket only to a monitor attached to that socket, inside the process.  The
daemon therefore republishes them, signed like every other frame, on an XPUB
bound at ``ipc://<run-dir>/<name>.monitor.ipc`` (mode 0600, like the control
socket).

Why an XPUB: it tells us when the first subscriber arrives and the last one
leaves, so the monitors run only while somebody watches.  A daemon nobody
watches pays for one idle socket, not for an event per reconnect attempt to
every dead peer.  Each new subscriber gets a ``HELLO`` event, which is how the
CLI knows that the monitors run and that it will miss nothing from then on.

Everything here runs on the event loop: reads and sends are NOBLOCK and
bounded, and a monitor is always disabled before its PAIR socket is closed.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from logonmesh.daemon import wire
from logonmesh.daemon.config import IPC_PATH_MAX

log = logging.getLogger(__name__)

HELLO = "HELLO"               # the event that greets each new subscriber
FEED_HWM = 10_000             # a stuck `logonmesh monitor` loses events, it never slows the loop
_ids = itertools.count()


def monitor_path(run_dir: str, name: str) -> str:
    """Where a daemon's monitor feed lives; the CLI computes the same path."""
    return os.path.join(run_dir, f"{name}.monitor.ipc")


def event_name(event: int) -> str:
    try:
        return zmq.Event(event).name or f"EVENT_{event:#x}"
    except ValueError:
        return f"EVENT_{event:#x}"


class MonitorFeed:
    """Republishes the socket events of some sockets, while anybody subscribes."""

    def __init__(self, ctx: zmq.Context, path: str, codec: wire.Codec,
                 targets: dict[str, zmq.Socket]) -> None:
        self.path = path
        self.codec = codec
        self.targets = targets            # label -> the socket watched
        self.listeners = 0
        self.sent = 0
        self._pairs: dict[str, zmq.Socket] = {}
        self._poller: zmq.Poller | None = None
        self._handlers: dict[object, Callable[[], None]] = {}  # the loop's, once attached
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.linger = 0
        self.xpub.sndhwm = FEED_HWM
        self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscribe, so we can count listeners
        if os.path.exists(path):
            os.unlink(path)  # stale: the daemon's lock proves no live daemon owns it
        try:
            self.xpub.bind(f"ipc://{path}")
            os.chmod(path, 0o600)
        except (zmq.ZMQError, OSError):
            self.xpub.close(linger=0)
            raise

    def attach(self, poller: zmq.Poller, handlers: dict[object, Callable[[], None]]) -> None:
        """Join the daemon's loop: the feed (un)registers its sockets there as monitors start and stop."""
        self._poller, self._handlers = poller, handlers
        poller.register(self.xpub, zmq.POLLIN)
        handlers[self.xpub] = self._on_subscription

    def view(self) -> dict:
        return {"endpoint": f"ipc://{self.path}", "listeners": self.listeners, "events_sent": self.sent,
                "watching": sorted(self._pairs)}

    def _on_subscription(self) -> None:
        for _ in range(100):
            try:
                msg = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.listeners += 1
                self._start()
                self._publish("monitor", HELLO, "", self.listeners)
            elif msg[:1] == b"\x00":
                self.listeners = max(0, self.listeners - 1)
                if self.listeners == 0:
                    self._stop()

    def _start(self) -> None:
        if self._poller is None:
            return
        for label, sock in self.targets.items():
            if label in self._pairs:
                continue
            pair = sock.get_monitor_socket(addr=f"inproc://logonmesh-monitor-{next(_ids)}")
            pair.linger = 0
            self._pairs[label] = pair
            self._poller.register(pair, zmq.POLLIN)
            self._handlers[pair] = functools.partial(self._on_events, label, pair)

    def _stop(self) -> None:
        """Disable each monitor before closing its PAIR socket, or libzmq can leak or hang."""
        for label, pair in list(self._pairs.items()):
            if self._poller is not None:
                self._poller.unregister(pair)
                self._handlers.pop(pair, None)
            self.targets[label].disable_monitor()
            pair.close(linger=0)
            del self._pairs[label]

    def _on_events(self, label: str, pair: zmq.Socket) -> None:
        for _ in range(100):
            try:
                event = recv_monitor_message(pair, zmq.NOBLOCK)
            except zmq.Again:
                return
            endpoint: str | bytes = event["endpoint"]
            text = endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes) else endpoint
            self._publish(label, event_name(int(event["event"])), text, int(event["value"]))

    def _publish(self, socket: str, event: str, endpoint: str, value: int) -> None:
        frame = self.codec.encode("mon", {"socket": socket, "event": event, "endpoint": endpoint,
                                          "value": value, "t": time.time()})
        try:
            self.xpub.send(frame, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            pass

    def close(self) -> None:
        """Stop the monitors, close the feed and remove its socket file."""
        self._stop()
        if self._poller is not None:
            try:
                self._poller.unregister(self.xpub)
            except KeyError:
                pass
            self._handlers.pop(self.xpub, None)
        self.xpub.close(linger=0)
        if os.path.exists(self.path):
            os.unlink(self.path)


def open_feed(ctx: zmq.Context, run_dir: str, codec: wire.Codec,
              targets: dict[str, zmq.Socket]) -> MonitorFeed | None:
    """The feed, or None (logged) when it cannot be bound: monitoring must never stop a node from starting."""
    path = monitor_path(run_dir, codec.sender)
    if len(path.encode()) > IPC_PATH_MAX:
        log.warning("no monitor feed: the ipc path %s is too long", path)
        return None
    try:
        return MonitorFeed(ctx, path, codec, targets)
    except (zmq.ZMQError, OSError) as exc:
        log.warning("no monitor feed at %s: %s", path, exc)
        return None
