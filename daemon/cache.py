"""The replicated cache: users and sessions, merged last-writer-wins.

An entry is ``(hlc, origin, value, expires_ms)`` under a kind ("u" for users,
keyed by username; "s" for sessions, keyed by token; "t" for login-failure
counts, keyed by subject and counting node).  A value of None is a tombstone.  ``merge`` keeps, for each key, the entry with the highest version
``(hlc, origin)``, so applying any set of entries in any order, any number of
times, gives the same cache: the merge is commutative, associative and
idempotent, which is what lets PUB/SUB drop and repair re-send freely.

Expired entries are refused on merge and purged on a timer, so a repair can
never bring back a session that ran out; a session's tombstone lives as long
as the session would have, and so outlives every copy it must defeat.
"""

from __future__ import annotations

import heapq
import time
from datetime import datetime
from typing import Any, Iterable, Iterator

from daemon.hlc import physical
from daemon.digest import Digest, bucket_of, entry_hash

Item = tuple[int, str, Any, int]           # (hlc, origin, value, expires_ms)
WireEntry = list                           # [kind, key, hlc, origin, value, expires_ms]


def now_ms() -> int:
    return int(time.time() * 1000)


def user_entry(user: dict) -> WireEntry:
    """A user's cache entry, with a version that is a pure function of the stored row.

    Users are written once and never change, so every node that loads the same
    row from the store must give it the same version, or their digests would
    differ forever.  The version is the creation time, and the origin the user
    id, which is unique (and spelled like a node name).
    """
    created = datetime.fromisoformat(user["created_at"])
    return ["u", user["username"], physical(int(created.timestamp() * 1000)), user["id"], dict(user), 0]


class Cache:
    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, Item]] = {"u": {}, "s": {}, "t": {}}
        self.digest = Digest()
        self._expiry: list[tuple[int, str, str]] = []  # heap of (expires_ms, kind, key)
        self.session_changes: list[WireEntry] = []      # drained by the daemon into the session feed

    def __len__(self) -> int:
        return sum(len(d) for d in self.kinds.values())

    def get(self, kind: str, key: str) -> Item | None:
        return self.kinds[kind].get(key)

    def merge(self, entries: Iterable[WireEntry], now: int | None = None) -> list[WireEntry]:
        """Apply entries; return those that changed the cache (what is worth publishing)."""
        now = now_ms() if now is None else now
        changed = []
        for entry in entries:
            if self.apply(entry, now):
                changed.append(entry)
        return changed

    def apply(self, entry: WireEntry, now: int) -> bool:
        kind, key, hlc, origin, value, expires = entry
        if expires and expires <= now:
            return False
        table = self.kinds[kind]
        old = table.get(key)
        if old is not None and (old[0], old[1]) >= (hlc, origin):
            return False
        bucket = bucket_of(kind, key)
        if old is not None:
            self.digest.toggle(bucket, entry_hash(kind, key, old[0], old[1]))
        else:
            self.digest.members[bucket].add((kind, key))
        self.digest.toggle(bucket, entry_hash(kind, key, hlc, origin))
        table[key] = (hlc, origin, value, expires)
        if expires:
            heapq.heappush(self._expiry, (expires, kind, key))
        if kind == "s":
            self.session_changes.append(entry)
        return True

    def purge(self, now: int | None = None) -> int:
        """Drop expired entries (sessions, their tombstones, failure counts); returns how many went."""
        now = now_ms() if now is None else now
        heap, purged = self._expiry, 0
        while heap and heap[0][0] <= now:
            expires, kind, key = heapq.heappop(heap)
            table = self.kinds[kind]
            item = table.get(key)
            if item is None or item[3] != expires:
                continue  # superseded by a later version with another expiry
            del table[key]
            bucket = bucket_of(kind, key)
            self.digest.toggle(bucket, entry_hash(kind, key, item[0], item[1]))
            self.digest.members[bucket].discard((kind, key))
            purged += 1
        return purged

    def entries(self) -> Iterator[WireEntry]:
        for kind, table in self.kinds.items():
            for key, (hlc, origin, value, expires) in table.items():
                yield [kind, key, hlc, origin, value, expires]

    def in_leaves(self, leaves: Iterable[int]) -> Iterator[WireEntry]:
        """The entries of some digest leaves: what a repair compares, without scanning the cache."""
        for leaf in leaves:
            for kind, key in self.digest.members[leaf]:
                hlc, origin, value, expires = self.kinds[kind][key]
                yield [kind, key, hlc, origin, value, expires]

    def counts(self) -> dict[str, int]:
        sessions = self.kinds["s"].values()
        tombstones = sum(1 for item in sessions if item[2] is None)
        return {"users": len(self.kinds["u"]), "sessions": len(self.kinds["s"]) - tombstones,
                "failure_counts": len(self.kinds["t"]),
                "tombstones": tombstones}
