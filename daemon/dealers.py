"""The DEALER sockets towards each peer's router: the transport half of membership.

The replica decides which peers exist (``OpenDealer`` / ``CloseDealer``
effects); this keeps one socket per peer name, sends without ever blocking,
and tells the loop which socket belongs to whom so replies reach the replica
under the peer's name.
"""

from __future__ import annotations

import zmq
from logonmesh.daemon.curve import Curve

PEER_HWM = 100  # what may queue for a peer that is not there yet; bounded, never blocks


class Dealers:
    def __init__(self, ctx: zmq.Context, curve: Curve) -> None:
        self.ctx = ctx
        self.curve = curve
        self.by_name: dict[str, zmq.Socket] = {}

    def open(self, name: str, endpoint: str) -> None:
        """Dial a peer's router; a peer that moved gets a new socket, its old one is closed."""
        self.close(name)
        dealer = self.ctx.socket(zmq.DEALER)
        self.curve.client(dealer)
        dealer.linger = 0
        dealer.sndhwm = PEER_HWM
        dealer.connect(endpoint)
        self.by_name[name] = dealer

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
        if dealer is not None:
            dealer.close(linger=0)

    def sockets(self) -> dict[zmq.Socket, str]:
        """socket -> peer name, for the poller."""
        return {sock: name for name, sock in self.by_name.items()}

    def close_all(self) -> None:
        for name in list(self.by_name):
            self.close(name)
