"""Who the other nodes are, and whether each is up: state only, no sockets.

A ``Peer`` is what we know of one remote node: its endpoints and what we last
heard from it on the bus.  ``Membership`` keeps the peers, learns them from
registry rows and announcements, and decides up and down from heartbeats
alone: the registry is shared storage and would keep saying "alive" across a
partition.  The DEALER towards each peer belongs to the daemon's shell
(``node.Dealers``); every time here is passed in, so a test drives it with a
fake clock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from logonmesh.daemon.offsets import Offset
from logonmesh.discovery import NodeRow

log = logging.getLogger(__name__)

BEAT_SAMPLES = 30  # heartbeat gaps kept per peer, for the web's /cluster chart
# libzmq's ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: one side speaks CURVE, the other NULL
MECHANISM_MISMATCH = 0x11000002


def handshake_reason(event: str, value: int) -> str:
    """Why a handshake with a peer failed, in words a person can act on (short: ``peers`` shows it in 80 columns).

    Every frame is signed with the cookie and the CURVE keys derive from it
    too, so the handshake fails for two causes only: one side has ``--curve``
    and the other not (the mechanisms differ), or both have it with different
    cookies (the keys differ).  libzmq tells the first apart; then we say so.
    """
    if event == "HANDSHAKE_FAILED_PROTOCOL" and value == MECHANISM_MISMATCH:
        return "handshake failed: one side has --curve, the other not"
    return "handshake failed: they disagree on --curve, or the cookies differ"


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
    beat_gaps: deque[int] = field(default_factory=lambda: deque(maxlen=BEAT_SAMPLES), repr=False)
    clock: Offset = field(default_factory=Offset, repr=False)  # its clock minus ours
    skew_warned_at: float | None = None  # monotonic ms of the last warning that its clock is beyond the maximum
    left_incarnation: int = 0       # the incarnation that said "bye" (0: it has not left)
    handshake_failure: str = ""     # the last reason logged for a failed handshake ("": none since heard)

    @property
    def left(self) -> bool:
        """It said goodbye: not down (nothing is wrong), and not dialled until a new incarnation shows up."""
        return self.left_incarnation != 0

    @property
    def state(self) -> str:
        return "up" if self.up else "left" if self.left else "down"

    def beat(self, now: float) -> None:
        """A heartbeat arrived: keep how long it came after the previous one (ms), so a person can see jitter."""
        if self.last_beat:
            self.beat_gaps.append(round(now - self.last_beat))
        self.last_beat = now

    def view(self, my_digest: bytes, now: float) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "state": self.state,
                "bus": self.bus_endpoint, "peer": self.peer_endpoint,
                "incarnation": self.bus_incarnation or self.incarnation, "last_seq": self.last_seq,
                "digest_match": bool(self.digest) and self.digest == my_digest,
                "heard_ms_ago": round(now - self.last_heard) if self.last_heard else None,
                "reason": self.change_reason, "in_registry": self.in_registry,
                "beat_gaps_ms": list(self.beat_gaps)}


class Membership:
    def __init__(self, me: str, down_after_ms: int, forget_after_ms: int) -> None:
        self.me = me
        self.down_after_ms = down_after_ms
        self.forget_after_ms = forget_after_ms
        self.peers: dict[str, Peer] = {}

    def up_names(self) -> list[str]:
        return sorted(p.name for p in self.peers.values() if p.up)

    def learn(self, name: str, bus: str, peer_endpoint: str, incarnation: int) -> tuple[Peer, bool]:
        """Add or refresh a peer; returns (peer, is_new_or_moved) so the caller can (re)connect to it."""
        peer = self.peers.get(name)
        if peer is not None and peer.left and incarnation <= peer.left_incarnation:
            peer.in_registry = True  # the row of the life that left, not withdrawn yet: nothing to dial
            return peer, False
        if peer is not None and not peer.left and (peer.bus_endpoint, peer.peer_endpoint) == (bus, peer_endpoint):
            peer.incarnation = max(peer.incarnation, incarnation)
            peer.in_registry = True
            return peer, False
        fresh = Peer(name, bus, peer_endpoint, incarnation)
        if peer is not None:  # moved or back after leaving (restarted): keep what we knew of its liveness
            fresh.up, fresh.last_heard, fresh.lost_at = peer.up, peer.last_heard, peer.lost_at
        self.peers[name] = fresh
        return fresh, True

    def sync_rows(self, rows: Iterable[NodeRow]) -> tuple[list[Peer], list[Peer], list[Peer]]:
        """Reconcile with the registry: returns (new or moved peers, moved-away old peers, withdrawn peers)."""
        seen: set[str] = set()
        fresh: list[Peer] = []
        moved_from: list[Peer] = []
        withdrawn: list[Peer] = []
        for row in rows:
            if row.id == self.me:
                continue
            seen.add(row.id)
            old = self.peers.get(row.id)
            peer, changed = self.learn(row.id, row.bus_endpoint, row.peer_endpoint, row.incarnation)
            if changed:
                fresh.append(peer)
                if old is not None and not old.left:  # a peer that left was unfollowed already
                    moved_from.append(old)
        for peer in self.peers.values():
            if peer.name not in seen and peer.in_registry:
                peer.in_registry = False
                withdrawn.append(peer)
        return fresh, moved_from, withdrawn

    def heard(self, peer: Peer, now: float) -> bool:
        """A bus message arrived from peer; True when this brings it up."""
        peer.last_heard = now
        peer.handshake_failure = ""
        if peer.up:
            return False
        peer.up, peer.lost_at, peer.change_reason = True, None, "heartbeat"
        log.info("peer %s up (heard on the bus)", peer.name)
        return True

    def mark_left(self, peer: Peer, incarnation: int, now: float) -> None:
        """The peer said goodbye on its bus before it stopped: a clean leave, at once, not a failure."""
        log.info("peer %s left the cluster", peer.name)
        peer.up, peer.lost_at, peer.change_reason = False, now, "left the cluster"
        peer.left_incarnation = max(incarnation, 1)
        peer.mismatches = 0

    def mark_down(self, peer: Peer, reason: str, now: float) -> None:
        if peer.up:
            log.warning("peer %s down (%s)", peer.name, reason)
        peer.up, peer.lost_at, peer.change_reason = False, now, reason
        peer.mismatches = 0

    def handshake_failed(self, peer: Peer, event: str, value: int) -> bool:
        """The dealer towards peer failed its handshake; True when this is news (the caller logs it once).

        A peer that is down shows the cause as its reason; one that is up (heard on
        the bus despite it) keeps its state, since the bus is the judge of liveness.
        """
        reason = handshake_reason(event, value)
        if not peer.up:
            peer.change_reason = reason
        news = reason != peer.handshake_failure
        peer.handshake_failure = reason
        return news

    def expire(self, now: float) -> tuple[list[Peer], list[Peer]]:
        """Mark silent peers down; forget long-lost ones.  Returns (went down, forgotten)."""
        down: list[Peer] = []
        gone: list[Peer] = []
        for peer in list(self.peers.values()):
            if peer.up and now - peer.last_heard > self.down_after_ms:
                self.mark_down(peer, f"no heartbeat for {now - peer.last_heard:.0f} ms", now)
                down.append(peer)
            elif (not peer.up and not peer.in_registry and peer.lost_at is not None
                  and now - peer.lost_at > self.forget_after_ms):
                gone.append(self.peers.pop(peer.name))
        return down, gone
