"""The session feed: every change of a mirrored kind, pushed to the node's own web process over ipc.

Which kinds the web mirrors (sessions, app records) is said by ``daemon.kinds``
(``Kind.mirrored``); the cache collects their changes and this feed sends them.

Checking a session with a round trip to the daemon costs a waitress thread
~100-170 µs of CPU per request.  Instead the web keeps a mirror of the
sessions, kept exact the way the ZeroMQ guide's Clone pattern keeps a
key-value store: the web subscribes here first, then asks the control socket
for a snapshot stamped with this feed's sequence number, drops updates at or
below it, and applies the rest.  Every message carries the next sequence
number, so a dropped one shows as a gap and the web takes a fresh snapshot.
A ``tick`` every heartbeat tells the web that the daemon is alive; without
ticks the web stops trusting its mirror and asks the daemon directly.

The PUB is bound at ``ipc://<run-dir>/<name>.sessions.ipc`` with mode 0600.
"""

from __future__ import annotations

import os

import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.kinds import Entry

FEED_HWM = 100_000


class SessionFeed:
    def __init__(self, ctx: zmq.Context, path: str, codec: wire.Codec) -> None:
        self.path = path
        self.codec = codec
        self.pub = ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = FEED_HWM
        if os.path.exists(path):
            os.unlink(path)  # stale: the daemon's lock proves no live daemon owns it
        mask = os.umask(0o177)
        try:
            self.pub.bind(f"ipc://{path}")
        finally:
            os.umask(mask)

    @property
    def seq(self) -> int:
        """The sequence number of the last message sent: a snapshot taken now is current as of it."""
        return self.codec.seq

    def publish(self, entries: list[Entry]) -> None:
        if entries:
            self._send("sessions", {"entries": entries})

    def tick(self) -> None:
        self._send("tick", {})

    def _send(self, type_: str, payload: dict) -> None:
        frame = self.codec.encode(type_, payload)
        try:
            self.pub.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the web sees the gap in sequence numbers and takes a snapshot

    def close(self) -> None:
        self.pub.close(linger=0)
        if os.path.exists(self.path):
            os.unlink(self.path)
