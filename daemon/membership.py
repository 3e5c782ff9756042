"""Who the other nodes are, and whether each is up.

A ``Peer`` is one remote node: its endpoints, its DEALER towards the node's
peer socket, and what we last heard from it on the bus.  ``Membership`` keeps
the peers, learns them from registry rows and announcements, and decides up
and down from heartbeats alone: the registry is shared storage and would keep
saying "alive" across a partition.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import zmq

from logonmesh.daemon.curve import Curve
from logonmesh.discovery import NodeRow

log = logging.getLogger(__name__)

PEER_HWM = 100  # what may queue for a peer that is not there yet; bounded, never blocks
BEAT_SAMPLES = 30  # heartbeat gaps kept per peer, for the web's /cluster chart


def monotonic_ms() -> float:
    return time.monotonic() * 1000


@dataclass(eq=False)
class Peer:
    name: str
    bus_endpoint: str
    peer_endpoint: str
    incarnation: int = 0            # of the row, or of the first message heard
    up: bool = False
    last_heard: float = 0.0         # monotonic ms of the last bus message
    last_seq: int = 0
    bus_incarnation: int = 0        # incarnation whose sequence last_seq belongs to
    digest: bytes = b""
    mismatches: int = 0
    in_registry: bool = True
    lost_at: float | None = None    # monotonic ms when it went down (kept for tools)
    change_reason: str = ""
    last_beat: float = 0.0          # monotonic ms of the last heartbeat (not any bus message)
    beat_gaps: deque = field(default_factory=lambda: deque(maxlen=BEAT_SAMPLES), repr=False)
    dealer: zmq.Socket | None = field(default=None, repr=False)

    def connect(self, ctx: zmq.Context, curve: Curve) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        curve.client(self.dealer)
        self.dealer.linger = 0
        self.dealer.sndhwm = PEER_HWM
        self.dealer.connect(self.peer_endpoint)

    def send(self, frame: bytes) -> bool:
        """Never blocks: a gone or slow peer just misses the message (repair covers it)."""
        if self.dealer is None:
            return False
        try:
            self.dealer.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def beat(self) -> None:
        """A heartbeat arrived: keep how long it came after the previous one (ms), so a person can see jitter."""
        now = monotonic_ms()
        if self.last_beat:
            self.beat_gaps.append(round(now - self.last_beat))
        self.last_beat = now

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close(linger=0)
            self.dealer = None

    def view(self, my_digest: bytes) -> dict:
        return {"name": self.name, "up": self.up, "bus": self.bus_endpoint, "peer": self.peer_endpoint,
                "incarnation": self.bus_incarnation or self.incarnation, "last_seq": self.last_seq,
                "digest_match": bool(self.digest) and self.digest == my_digest,
                "heard_ms_ago": round(monotonic_ms() - self.last_heard) if self.last_heard else None,
                "reason": self.change_reason, "in_registry": self.in_registry,
                "beat_gaps_ms": list(self.beat_gaps)}


class Membership:
    def __init__(self, me: str, ctx: zmq.Context, curve: Curve, down_after_ms: int,
                 forget_after_ms: int) -> None:
        self.me = me
        self.ctx = ctx
        self.curve = curve
        self.down_after_ms = down_after_ms
        self.forget_after_ms = forget_after_ms
        self.peers: dict[str, Peer] = {}

    def up_names(self) -> list[str]:
        return sorted(p.name for p in self.peers.values() if p.up)

    def learn(self, name: str, bus: str, peer_endpoint: str, incarnation: int) -> tuple[Peer, bool]:
        """Add or refresh a peer; returns (peer, is_new_or_moved) so the caller can (re)connect the bus."""
        peer = self.peers.get(name)
        if peer is not None and (peer.bus_endpoint, peer.peer_endpoint) == (bus, peer_endpoint):
            peer.incarnation = max(peer.incarnation, incarnation)
            peer.in_registry = True
            return peer, False
        if peer is not None:
            peer.close()
        fresh = Peer(name, bus, peer_endpoint, incarnation)
        if peer is not None:  # moved (restarted): keep what we knew of its liveness
            fresh.up, fresh.last_heard, fresh.lost_at = peer.up, peer.last_heard, peer.lost_at
        fresh.connect(self.ctx, self.curve)
        self.peers[name] = fresh
        return fresh, True

    def sync_rows(self, rows: Iterable[NodeRow]) -> tuple[list[Peer], list[Peer], list[Peer]]:
        """Reconcile with the registry: returns (new or moved peers, moved-away old peers, withdrawn peers)."""
        seen, fresh, moved_from, withdrawn = set(), [], [], []
        for row in rows:
            if row.id == self.me:
                continue
            seen.add(row.id)
            old = self.peers.get(row.id)
            peer, changed = self.learn(row.id, row.bus_endpoint, row.peer_endpoint, row.incarnation)
            if changed:
                fresh.append(peer)
                if old is not None:
                    moved_from.append(old)
        for peer in self.peers.values():
            if peer.name not in seen and peer.in_registry:
                peer.in_registry = False
                withdrawn.append(peer)
        return fresh, moved_from, withdrawn

    def heard(self, peer: Peer) -> bool:
        """A bus message arrived from peer; True when this brings it up."""
        peer.last_heard = monotonic_ms()
        if peer.up:
            return False
        peer.up, peer.lost_at, peer.change_reason = True, None, "heartbeat"
        log.info("peer %s up (heard on the bus)", peer.name)
        return True

    def mark_down(self, peer: Peer, reason: str) -> None:
        if peer.up:
            log.warning("peer %s down (%s)", peer.name, reason)
        peer.up, peer.lost_at, peer.change_reason = False, monotonic_ms(), reason
        peer.mismatches = 0

    def expire(self) -> tuple[list[Peer], list[Peer]]:
        """Mark silent peers down; forget long-lost ones.  Returns (went down, forgotten)."""
        now = monotonic_ms()
        down, gone = [], []
        for peer in list(self.peers.values()):
            if peer.up and now - peer.last_heard > self.down_after_ms:
                self.mark_down(peer, f"no heartbeat for {now - peer.last_heard:.0f} ms")
                down.append(peer)
            elif (not peer.up and not peer.in_registry and peer.lost_at is not None
                  and now - peer.lost_at > self.forget_after_ms):
                gone.append(self.peers.pop(peer.name))
        return down, gone
