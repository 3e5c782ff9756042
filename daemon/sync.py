"""Repair: pulling a peer's state when the bus may have lost something.

The daemon asks for a repair when a peer comes up, when a sequence gap shows
a lost message, and when digests have disagreed for two heartbeats.  This
module decides whether a request may go out now (one at a time per peer,
retried after a timeout) and builds and applies the state transfer, in the
manner of the Clone pattern's snapshot: the reply is merged with the same
idempotent rules as any bus merge, so a duplicate or late reply is harmless.
"""

from __future__ import annotations

import logging
from collections import Counter

from daemon.cache import Cache
from daemon.membership import Peer, monotonic_ms

log = logging.getLogger(__name__)


class Repairs:
    def __init__(self, cache: Cache, stats: Counter, timeout_ms: float) -> None:
        self.cache = cache
        self.stats = stats
        self.timeout_ms = timeout_ms

    def due(self, peer: Peer) -> bool:
        """One outstanding request per peer; a lost one is retried after the timeout."""
        sent = peer.sync_sent_at
        return sent is None or monotonic_ms() - sent > self.timeout_ms

    def mark_sent(self, peer: Peer, reason: str) -> None:
        peer.sync_sent_at = monotonic_ms()
        self.stats["repairs_started"] += 1
        self.stats[f"repairs_for_{reason}"] += 1
        log.info("repair with %s (%s)", peer.name, reason)

    def snapshot(self, their_digest: bytes) -> list[list]:
        """Everything we hold, unless the requester already has exactly that."""
        if their_digest == self.cache.digest.root:
            return []
        return list(self.cache.entries())

    def applied(self, peer: Peer, entries: list, size: int) -> list[list]:
        """Merge a reply; returns the entries that were new here."""
        peer.sync_sent_at = None
        peer.mismatches = 0
        changed = self.cache.merge(entries)
        self.stats["repairs_done"] += 1
        self.stats["repair_entries_in"] += len(entries)
        self.stats["repair_bytes_in"] += size
        if changed:
            log.info("repair with %s brought %d new entries", peer.name, len(changed))
        return changed
