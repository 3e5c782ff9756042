"""Repair: making two caches equal at a cost in proportion to their difference.

PUB/SUB loses messages, so a daemon repairs with a peer when the peer comes
up, when a sequence gap shows a lost message, and when digests have disagreed
for two heartbeats.  The two sides walk the digest tree top-down over the peer
socket, as Dynamo and Riak do, and ship only the entries of the leaves that
differ, both ways in one exchange::

    A -> B  tree_req  {root, groups}         A's 64 group hashes
    B -> A  tree_rep  {groups, leaves}       B's leaves of the groups that differ
    A -> B  diff_req  {leaves, hashes}       8-byte hashes of A's entries in the leaves that differ
    B -> A  diff_rep  {entries, want}        B's entries A has no hash for; A's hashes B lacks
    A -> B  push      {entries}              the entries B asked for

An entry's hash covers its key and version, so an entry that differs at all
travels, and last-writer-wins on each side keeps the newer one.

Every step is merged with the same idempotent rules as a bus merge, so a
repair that stops halfway leaves both sides valid and is simply run again.
What a repair brings in is republished on the bus, so that one node coming
back is repaired by one peer and the rest hear it, instead of every peer
pulling the same difference.  Each node runs one repair at a time, and an
exchange covers at most ``LEAF_BATCH`` leaves holding at most ``MAX_ENTRIES``
entries, so a message, and the hashing each side does on its loop, stay
bounded; a larger difference takes further exchanges, started at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from logonmesh.daemon.cache import Cache
from logonmesh.daemon.digest import FANOUT, LEAVES, differing, entry_hash, unpack
from logonmesh.daemon.wire import SHORT_HASH
from logonmesh.daemon.clock import SYSTEM, Clock
from logonmesh.daemon.membership import Peer

log = logging.getLogger(__name__)

LEAF_BATCH = 512
MAX_ENTRIES = 10_000  # per message: ~3.5 MB of users, and under 45 MB even if all are full 4 KB sessions' data,
                      # so well under --max-msg-bytes (64 MiB); the rest goes next round
Message = tuple[str, dict]


@dataclass
class Session:
    """One repair this node started with one peer."""

    peer: str
    reason: str
    started: float
    stage: str = "tree_req"
    leaves: list[int] = field(default_factory=list)
    more: bool = False          # leaves were left for another exchange


class Repairs:
    def __init__(self, cache: Cache, stats: Counter, timeout_ms: float, clock: Clock = SYSTEM) -> None:
        self.cache = cache
        self.stats = stats
        self.timeout_ms = timeout_ms
        self.clock = clock
        self.active: Session | None = None

    # ---- the side that starts -------------------------------------------

    def busy(self) -> bool:
        """One repair at a time; a stalled one is abandoned after the timeout and may be retried."""
        if self.active and self.clock.mono_ms() - self.active.started > self.timeout_ms:
            log.warning("repair with %s timed out at %s; it will be retried", self.active.peer, self.active.stage)
            self.stats["repairs_timed_out"] += 1
            self.active = None
        return self.active is not None

    def start(self, peer: Peer, reason: str) -> Message | None:
        if self.busy():
            return None
        self.active = Session(peer.name, reason, self.clock.mono_ms())
        self.stats["repairs_started"] += 1
        self.stats[f"repairs_for_{reason}"] += 1
        log.info("repair with %s (%s)", peer.name, reason)
        digest = self.cache.digest
        return "tree_req", {"root": digest.root, "groups": digest.group_bytes()}

    def _session(self, peer: Peer, stage: str) -> Session | None:
        s = self.active
        if s is None or s.peer != peer.name or s.stage != stage:
            self.stats["repair_stray_replies"] += 1
            return None
        return s

    def on_tree_rep(self, peer: Peer, payload: dict) -> Message | None:
        session = self._session(peer, "tree_req")
        if session is None:
            return None
        groups = [g for g in payload["groups"] if g < FANOUT]
        theirs = unpack(payload["leaves"])
        if len(theirs) != len(groups) * FANOUT:
            self._fail("tree_rep has the wrong number of leaves")
            return None
        leaves: list[int] = []
        for i, g in enumerate(groups):
            mine = self.cache.digest.leaves[g * FANOUT:(g + 1) * FANOUT]
            leaves += [g * FANOUT + j for j in differing(mine, theirs[i * FANOUT:(i + 1) * FANOUT])]
        if not leaves:
            self._finish(peer)
            return None
        batch = self._batch(leaves)
        session.more = len(batch) < len(leaves)
        session.leaves = batch
        session.stage = "diff_req"
        hashes = b"".join(self._hashed(session.leaves))
        return "diff_req", {"leaves": session.leaves, "hashes": hashes}

    def _batch(self, leaves: list[int]) -> list[int]:
        """The first leaves whose entries, here, add up to at most MAX_ENTRIES (and at most LEAF_BATCH leaves).

        Each side hashes every entry of the leaves in an exchange on its event
        loop, so the batch bounds that work (~0.1 s) as well as the messages.
        """
        batch: list[int] = []
        total = 0
        for leaf in leaves[:LEAF_BATCH]:
            size = self.cache.leaf_size(leaf)
            if batch and total + size > MAX_ENTRIES:
                break
            batch.append(leaf)
            total += size
        return batch

    def on_diff_rep(self, peer: Peer, payload: dict) -> tuple[list, Message | None, bool]:
        """Merge what we lacked; return (entries new here, the push of what they lack, more to do)."""
        session = self._session(peer, "diff_req")
        if session is None:
            return [], None, False
        want = set(split(payload["want"]))
        wanted = [self.cache.entry(*name) for h, name in self._hashed(session.leaves).items()
                  if h in want][:MAX_ENTRIES]
        changed = self._merge(payload["entries"])
        self.stats["repair_entries_out"] += len(wanted)
        self._finish(peer)
        return changed, ("push", {"entries": wanted}) if wanted else None, session.more

    def _finish(self, peer: Peer) -> None:
        self.stats["repairs_done"] += 1
        peer.mismatches = 0
        self.active = None

    def _fail(self, why: str) -> None:
        self.stats["repairs_failed"] += 1
        log.warning("repair with %s failed: %s", self.active.peer if self.active else "?", why)
        self.active = None

    # ---- the side that answers ------------------------------------------

    def answer_tree(self, payload: dict) -> Message:
        digest = self.cache.digest
        if payload["root"] == digest.root:
            return "tree_rep", {"groups": [], "leaves": b""}
        groups = differing(digest.groups, unpack(payload["groups"]))
        return "tree_rep", {"groups": groups, "leaves": digest.leaf_bytes(groups)}

    def answer_diff(self, payload: dict) -> Message:
        """Send the entries they have no hash for; ask for the hashes we have no entry for."""
        leaves = [leaf for leaf in payload["leaves"] if leaf < LEAVES][:LEAF_BATCH]
        theirs = set(split(payload["hashes"]))
        mine = self._hashed(leaves)
        send = [self.cache.entry(*name) for h, name in mine.items() if h not in theirs][:MAX_ENTRIES]
        want = b"".join(h for h in theirs if h not in mine)
        self.stats["repairs_answered"] += 1
        self.stats["repair_entries_out"] += len(send)
        return "diff_rep", {"entries": send, "want": want}

    def _hashed(self, leaves: list[int]) -> dict[bytes, tuple[str, str]]:
        """short hash -> (kind, key) for every entry of the leaves; values are fetched only for what travels."""
        return {short_hash(v): (v[0], v[1]) for v in self.cache.versions_in(leaves)}

    def on_push(self, entries: list) -> list:
        return self._merge(entries)

    def snapshot(self, their_digest: bytes) -> Message:
        """The whole cache: kept as the baseline that the benchmark compares repair with."""
        entries = [] if their_digest == self.cache.digest.root else list(self.cache.entries())
        return "sync_rep", {"entries": entries, "digest": self.cache.digest.root}

    def _merge(self, entries: list) -> list:
        changed = self.cache.merge(entries, self.clock.wall_ms())
        self.stats["repair_entries_in"] += len(entries)
        if changed:
            log.info("repair brought %d new entries", len(changed))
        return changed


def short_hash(entry: Sequence[Any]) -> bytes:
    return entry_hash(entry[0], entry[1], entry[2], entry[3]).to_bytes(16, "little")[:SHORT_HASH]


def split(data: bytes) -> list[bytes]:
    return [data[i:i + SHORT_HASH] for i in range(0, len(data), SHORT_HASH)]
