"""The replicated cache: users, sessions, login-failure counts, app records and session data, merged by
``kinds.supersedes``.

An entry is ``(hlc, origin, value, expires_ms)`` under a kind and a key; the
kinds (users, sessions, login-failure counts, app records, web session data) are defined once,
in ``daemon.kinds``.  A value of None is a tombstone.
``merge`` keeps, for each key, the entry with the highest version
``(hlc, origin)`` (for sessions and session data, a tombstone first: a
revocation always wins), so applying any set of entries in any order, any number of times,
gives the same cache: the merge is commutative, associative and idempotent,
which is what lets PUB/SUB drop and repair re-send freely.

Expired entries are refused on merge and purged on a timer, so a repair can
never bring back a session that ran out; a session's tombstone lives longer
than every copy it has met (and a logout gives it ``TOMBSTONE_GRACE_MS``
beyond the session), and so outlives every copy it must defeat.  Expiries are in this node's own clock:
the replica rebases those that peers send (``daemon.offsets``).

Users are most of the memory, so they are kept compact: a user's version is
its creation time and its origin its id (see ``user_entry``), so the cache
keeps one bytes object per user (version, id and password hash, packed) and
rebuilds the rest on the way out.  Every way out (``get``, ``entries``,
``in_leaves``) gives full values; only this module knows the packing.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from logonmesh.daemon.digest import Digest, bucket_of, entry_hash
from logonmesh.daemon.hlc import physical, wall_ms
from logonmesh.daemon.kinds import (
    ENDED_WINS,
    KINDS as REGISTRY,
    Entry,
    SortedKeys,
    split_record_key,
    supersedes,
)

Item = tuple[int, str, Any, int]           # (hlc, origin, value, expires_ms)
Stored = bytes | Item                      # as a table holds it: a user packed into bytes, else an Item
KINDS = tuple(REGISTRY)
FEED_KINDS = tuple(code for code, kind in REGISTRY.items() if kind.mirrored)
# What the session store keeps across a full restart: the kinds whose ending wins (sessions, session data),
# whose lattice is the one the store applies (``Store.save_sessions``).
PERSISTED_KINDS = frozenset(code for code, kind in REGISTRY.items() if kind.ended_wins and not kind.durable)


def now_ms() -> int:
    return int(time.time() * 1000)


def user_entry(user: dict) -> Entry:
    """A user's cache entry, with a version that is a pure function of the stored row.

    Users are written once and never change, so every node that loads the same
    row from the store must give it the same version, or their digests would
    differ forever.  The version is the creation time, and the origin the user
    id, which is unique (and spelled like a node name).
    """
    created = datetime.fromisoformat(user["created_at"])
    return Entry("u", user["username"], physical(int(created.timestamp() * 1000)), user["id"],
                 {"id": user["id"], "username": user["username"], "password_hash": user["password_hash"],
                  "created_at": created_text(int(created.timestamp() * 1000))}, 0)


def created_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


_HEX_TAIL = re.compile(r"^(.*\$)((?:[0-9a-f]{2})+)$")  # werkzeug's "method$salt$hexdigest"


def _pack_user(hlc: int, uid: str, password_hash: str) -> Stored:
    """One bytes object for a user: 8 bytes version, 16 bytes id, then the hash (its hex digest as raw bytes).

    About 170 bytes in all, against ~400 for a tuple of an int and two strings.
    An id that is not 32 hex digits (a foreign store) keeps the plain tuple.
    """
    if not _is_hex(uid):
        return hlc, uid, password_hash, 0
    tail = _HEX_TAIL.match(password_hash)
    packed = b"\0" + tail.group(1).encode() + b"\0" + bytes.fromhex(tail.group(2)) if tail \
        else b"\1" + password_hash.encode()
    return hlc.to_bytes(8, "big") + bytes.fromhex(uid) + packed


def _unpack_user(blob: bytes) -> Item:
    hlc, uid, rest = int.from_bytes(blob[:8], "big"), blob[8:24].hex(), blob[24:]
    if rest[:1] == b"\0":
        prefix, _, digest = rest[1:].partition(b"\0")
        password_hash = prefix.decode() + digest.hex()
    else:
        password_hash = rest[1:].decode()
    return hlc, uid, password_hash, 0


_HEX32 = re.compile(r"[0-9a-f]{32}")


def _is_hex(text: str) -> bool:
    return _HEX32.fullmatch(text) is not None


def _stored(stored: Stored) -> Item:
    """A stored item as (hlc, origin, value, expires); a user's value is then its password hash.

    Only users are ever packed into bytes, so the type alone says which it is.
    """
    return _unpack_user(stored) if isinstance(stored, bytes) else stored


def _expand(kind: str, key: str, stored: Stored) -> Item:
    """The full value of a stored item (users are stored compact)."""
    hlc, origin, value, expires = _stored(stored)
    if kind == "u" and value is not None:
        value = {"id": origin, "username": key, "password_hash": value,
                 "created_at": created_text(wall_ms(hlc))}
    return hlc, origin, value, expires


def _ending_expiry(tombstone_expires: int, other: Item) -> int:
    """A tombstone's expiry after it met ``other``: the later of the two, so it outlives every copy it defeated.

    (The logout itself adds ``TOMBSTONE_GRACE_MS``; taking only the maximum here
    keeps a purge equal to never having merged what expired.)
    """
    return max(tombstone_expires, other[3])


def expand_users(stored: list[tuple[str, Stored]]) -> list[dict]:
    """Full user records from ``Cache.stored_users`` (pure: safe on another thread)."""
    users = (_expand("u", key, item)[2] for key, item in stored)
    return [user for user in users if user is not None]


class Cache:
    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, Stored]] = {kind: {} for kind in KINDS}
        self.digest = Digest()
        # the keys of each digest leaf, per kind, so a repair reads a leaf without scanning
        self._leaf_keys: dict[str, defaultdict[int, set[str]]] = {kind: defaultdict(set) for kind in KINDS}
        self._expiry: list[tuple[int, str, str]] = []  # heap of (expires_ms, kind, key)
        self.feed_changes: list[Entry] = []  # changes of the mirrored kinds, drained into the web's feed
        self._namespaces: defaultdict[str, SortedKeys] = defaultdict(SortedKeys)  # record namespace -> entry keys
        self.persisted: frozenset[str] = frozenset()  # kinds whose changes are kept for the store (``persist``)
        self._unsaved: dict[tuple[str, str], None] = {}  # (kind, key) changed since the last ``take_unsaved``
        # username -> tokens of their live sessions: "sessions of alice" reads a few keys, not every session
        self._sessions_of: defaultdict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return sum(len(d) for d in self.kinds.values())

    def get(self, kind: str, key: str) -> Item | None:
        item = self.kinds[kind].get(key)
        return None if item is None else _expand(kind, key, item)

    def has(self, kind: str, key: str) -> bool:
        return key in self.kinds[kind]

    def merge(self, entries: Iterable[Entry | list], now: int | None = None) -> list[Entry]:
        """Apply entries; return those that changed the cache (what is worth publishing)."""
        now = now_ms() if now is None else now
        return [Entry(*entry) for entry in entries if self.apply(entry, now)]

    def apply(self, entry: Entry | list, now: int) -> bool:
        kind, key, hlc, origin, value, expires = entry
        if expires and expires <= now:
            return False
        table = self.kinds[kind]
        old = table.get(key)
        if old is not None:
            old = _stored(old)
            if not supersedes(kind, (hlc, origin, value), old):
                self._outlive(kind, key, old, expires)
                return False
            if kind in ENDED_WINS and value is None:
                expires = _ending_expiry(expires, old)
        bucket = bucket_of(kind, key)
        if old is not None:
            self.digest.toggle(bucket, entry_hash(kind, key, old[0], old[1]))
        else:
            self._leaf_keys[kind][bucket].add(key)
        self.digest.toggle(bucket, entry_hash(kind, key, hlc, origin))
        if kind == "u" and value is not None:
            table[key] = _pack_user(hlc, origin, value["password_hash"])
        else:
            table[key] = (hlc, origin, value, expires)
        if expires:
            heapq.heappush(self._expiry, (expires, kind, key))
        if kind == "r" and old is None:
            self._namespaces[split_record_key(key)[0]].add(key)
        if kind == "s":
            self._index_session(key, old[2] if old is not None else None, value)
        if kind in FEED_KINDS:
            self.feed_changes.append(Entry(*entry))
        if kind in self.persisted:
            self._unsaved[(kind, key)] = None
        return True

    def _outlive(self, kind: str, key: str, kept: Item, expires: int) -> None:
        """An entry lost to a tombstone of an ``ended_wins`` kind: the tombstone takes the later expiry."""
        if kind not in ENDED_WINS or kept[2] is not None or expires <= kept[3]:
            return
        self.kinds[kind][key] = (kept[0], kept[1], None, expires)
        heapq.heappush(self._expiry, (expires, kind, key))
        if kind in self.persisted:
            self._unsaved[(kind, key)] = None

    def persist(self, kinds: Iterable[str]) -> None:
        """Keep track of what changes in these kinds, for ``take_unsaved`` (the shell's write-behind)."""
        self.persisted = frozenset(kinds)

    def take_unsaved(self) -> list[Entry]:
        """The current entry of every key of a persisted kind changed since the last call, once each.

        Keyed, not a log: a burst of writes to one key is one row, and the row
        is the cache's merged state (a kept ending's later expiry included).  A
        key purged meanwhile has nothing to save: its row expires in the store too.
        """
        unsaved, self._unsaved = self._unsaved, {}
        return [self.entry(kind, key) for kind, key in unsaved if key in self.kinds[kind]]

    def unsaved(self, entries: Iterable[Entry]) -> None:
        """A batch the store did not take: its keys are saved again with the next one."""
        for entry in entries:
            self._unsaved[(entry.kind, entry.key)] = None

    @property
    def unsaved_count(self) -> int:
        return len(self._unsaved)

    def _index_session(self, token: str, old: Any, new: Any) -> None:
        """Keep ``_sessions_of`` to the live sessions: a revocation or a purge takes the token out."""
        if old is not None and (new is None or new["user"] != old["user"]):
            tokens = self._sessions_of.get(old["user"])
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._sessions_of[old["user"]]
        if new is not None:
            self._sessions_of[new["user"]].add(token)

    def sessions_of(self, username: str) -> list[Entry]:
        """The live sessions of a user (expired ones too until the purge takes them): by the index, not a scan."""
        table = self.kinds["s"]
        return [Entry("s", token, *_stored(table[token])) for token in sorted(self._sessions_of.get(username, ()))]

    def records(self, namespace: str, prefix: str = "") -> list[Entry]:
        """The records of a namespace whose own key starts with prefix, tombstones included, by key."""
        table, keys = self.kinds["r"], self._namespaces.get(namespace)
        found = keys.starting_with(f"{namespace}/{prefix}") if keys is not None else []
        return [Entry("r", key, *_stored(table[key])) for key in found]

    def load_users(self, users: Iterable[dict]) -> int:
        """Boot: take every stored user, faster than merge (no comparisons, no lists)."""
        table, leaf_keys, toggle = self.kinds["u"], self._leaf_keys["u"], self.digest.toggle
        count = 0
        for user in users:
            key, origin = user["username"], user["id"]
            hlc = physical(int(datetime.fromisoformat(user["created_at"]).timestamp() * 1000))
            old = table.get(key)
            if old is not None:
                old = _stored(old)
                if (old[0], old[1]) >= (hlc, origin):
                    continue
            bucket = bucket_of("u", key)
            if old is not None:
                toggle(bucket, entry_hash("u", key, old[0], old[1]))
            leaf_keys[bucket].add(key)
            toggle(bucket, entry_hash("u", key, hlc, origin))
            table[key] = _pack_user(hlc, origin, user["password_hash"])
            count += 1
        return count

    def purge(self, now: int | None = None) -> int:
        """Drop expired entries (sessions, their tombstones, failure counts); returns how many went."""
        now = now_ms() if now is None else now
        heap, purged = self._expiry, 0
        while heap and heap[0][0] <= now:
            expires, kind, key = heapq.heappop(heap)
            table = self.kinds[kind]
            stored = table.get(key)
            item = None if stored is None else _stored(stored)
            if item is None or item[3] != expires:
                continue  # superseded by a later version with another expiry
            del table[key]
            if kind == "r":
                self._namespaces[split_record_key(key)[0]].discard(key)
            if kind == "s":
                self._index_session(key, item[2], None)
            bucket = bucket_of(kind, key)
            self.digest.toggle(bucket, entry_hash(kind, key, item[0], item[1]))
            self._leaf_keys[kind][bucket].discard(key)
            purged += 1
        return purged

    def shift_expiries(self, delta_ms: int) -> int:
        """Move every expiry by delta_ms (our clock stepped); returns how many moved.  The digest does not
        cover expiries, so it stays as it is."""
        moved = 0
        for kind, table in self.kinds.items():
            for key, stored in table.items():
                if not isinstance(stored, bytes) and stored[3]:
                    table[key] = (stored[0], stored[1], stored[2], max(1, stored[3] + delta_ms))
                    moved += 1
        self._expiry = [(max(1, expires + delta_ms), kind, key) for expires, kind, key in self._expiry]
        heapq.heapify(self._expiry)
        return moved

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        for k in (kind,) if kind else KINDS:
            for key, item in self.kinds[k].items():
                yield Entry(k, key, *_expand(k, key, item))

    def in_leaves(self, leaves: Iterable[int]) -> Iterator[Entry]:
        """The entries of some digest leaves, full values included."""
        for kind, key, _, _ in self.versions_in(leaves):
            yield self.entry(kind, key)

    def versions_in(self, leaves: Iterable[int]) -> Iterator[tuple[str, str, int, str]]:
        """(kind, key, hlc, origin) of every entry of some leaves: what a repair hashes, without the values."""
        for leaf in leaves:
            for kind in KINDS:
                table = self.kinds[kind]
                for key in self._leaf_keys[kind].get(leaf, ()):
                    stored = table[key]
                    if isinstance(stored, bytes):
                        yield kind, key, int.from_bytes(stored[:8], "big"), stored[8:24].hex()
                    else:
                        yield kind, key, stored[0], stored[1]

    def stored_users(self) -> list[tuple[str, Stored]]:
        """A copy of the users table as stored: cheap on the loop, expanded elsewhere by ``expand_users``."""
        return list(self.kinds["u"].items())

    def entry(self, kind: str, key: str) -> Entry:
        return Entry(kind, key, *_expand(kind, key, self.kinds[kind][key]))

    def leaf_size(self, leaf: int) -> int:
        return sum(len(keys.get(leaf, ())) for keys in self._leaf_keys.values())

    def counts(self) -> dict[str, int]:
        """How many of each: live sessions and their tombstones, live records, live session data."""
        sessions = self.kinds["s"].values()
        tombstones = sum(1 for item in sessions if item[2] is None)
        records = sum(1 for item in self.kinds["r"].values() if item[2] is not None)
        session_data = sum(1 for item in self.kinds["d"].values() if item[2] is not None)
        return {"users": len(self.kinds["u"]), "sessions": len(self.kinds["s"]) - tombstones,
                "failure_counts": len(self.kinds["t"]), "tombstones": tombstones, "records": records,
                "session_data": session_data}
