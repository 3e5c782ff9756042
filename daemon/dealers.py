"""The DEALER sockets towards each peer's router: the transport half of membership.

The replica decides which peers exist (``OpenDealer`` / ``CloseDealer``
effects); this keeps one socket per peer name, sends without ever blocking,
and tells the loop which socket belongs to whom so replies reach the replica
under the peer's name.

Each dealer also has a monitor of its own, always on but limited to failed
handshakes: a node with ``--curve`` and one without (or with other cookies)
never exchange a byte, and only such an event can say why.  The events come
about once per reconnect attempt at most, so this costs nearly nothing; and
the ``logonmesh monitor`` feed watches other sockets (libzmq allows one
monitor per socket), so the two never collide.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from logonmesh.daemon.curve import Curve

PEER_HWM = 100  # what may queue for a peer that is not there yet; bounded, never blocks
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_ids = itertools.count()


class HandshakeFailure(NamedTuple):
    event: str       # "HANDSHAKE_FAILED_PROTOCOL", ...
    value: int       # libzmq's detail: a ZMQ_PROTOCOL_ERROR_* code, or an errno
    endpoint: str


class Dealers:
    def __init__(self, ctx: zmq.Context, curve: Curve) -> None:
        self.ctx = ctx
        self.curve = curve
        self.by_name: dict[str, zmq.Socket] = {}
        self.monitors: dict[str, zmq.Socket] = {}  # peer name -> the PAIR its dealer's events arrive on

    def open(self, name: str, endpoint: str) -> None:
        """Dial a peer's router; a peer that moved gets a new socket, its old one is closed."""
        self.close(name)
        dealer = self.ctx.socket(zmq.DEALER)
        self.curve.client(dealer)
        dealer.linger = 0
        dealer.sndhwm = PEER_HWM
        monitor = dealer.get_monitor_socket(events=HANDSHAKE_FAILED, addr=f"inproc://logonmesh-dealer-{next(_ids)}")
        monitor.linger = 0
        dealer.connect(endpoint)
        self.by_name[name] = dealer
        self.monitors[name] = monitor

    def send(self, name: str, frame: bytes) -> bool:
        """Never blocks: a gone or slow peer just misses the message (repair covers it)."""
        dealer = self.by_name.get(name)
        if dealer is None:
            return False
        try:
            dealer.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self, name: str) -> None:
        dealer = self.by_name.pop(name, None)
        monitor = self.monitors.pop(name, None)
        if dealer is not None:
            dealer.disable_monitor()  # before its PAIR closes, or libzmq can leak or hang
            dealer.close(linger=0)
        if monitor is not None:
            monitor.close(linger=0)

    def sockets(self) -> dict[zmq.Socket, str]:
        """socket -> peer name, for the poller: the dealers and their monitors."""
        return {sock: name for name, sock in (*self.by_name.items(), *self.monitors.items())}

    def is_monitor(self, sock: zmq.Socket) -> bool:
        return any(sock is monitor for monitor in self.monitors.values())

    @staticmethod
    def failures(monitor: zmq.Socket, limit: int = 100) -> list[HandshakeFailure]:
        """What the monitor has queued, never blocking; at most ``limit`` (the rest waits for the next poll)."""
        found: list[HandshakeFailure] = []
        for _ in range(limit):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            endpoint = event["endpoint"]
            text = endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes) else str(endpoint)
            found.append(HandshakeFailure(zmq.Event(int(event["event"])).name or "", int(event["value"]), text))
        return found

    def close_all(self) -> None:
        for name in list(self.by_name):
            self.close(name)
