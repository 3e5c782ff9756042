"""The entries of the replicated cache and the one registry of their kinds.

Every place that must know what a kind of entry is (the wire's validation,
the cache, the web's feed and mirror, the redaction of secrets for the CLI
and ``tap``) asks ``KINDS`` here, so a new kind is one entry in one table.

An entry is an ``Entry``: a NamedTuple, so it still packs to the msgpack
array ``[kind, key, hlc, origin, value, expires]`` that the wire carries and
still unpacks and indexes like the old positional list.  A value of None is
a tombstone; ``expires`` is milliseconds since the epoch, 0 for never.

This module does no I/O and imports nothing of the daemon.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import msgpack

from logonmesh.discovery import StoredRecord


class Entry(NamedTuple):
    kind: str
    key: str
    hlc: int
    origin: str
    value: Any      # a map of the kind's fields, or None for a tombstone
    expires: int    # ms since the epoch; 0 = never


# ---- records: an app's small values, per user or per app, under a namespace and a key ----------

NAMESPACE_RE = re.compile(r"[a-z0-9_.-]{1,64}")
RECORD_KEY_MAX = 200            # characters of a record's own key (after its namespace)
RECORD_VALUE_MAX = 4096         # bytes of the value, packed with msgpack (use_bin_type=True)
KEY_MAX = 256                   # characters of an entry key of every other kind
TOMBSTONE_GRACE_MS = 60_000     # an ending outlives the longest copy it defeats by this much (see SECURITY.md)

# ---- sessions: what a person sees of each of theirs --------------------------------------------

DEVICE_MAX = 60                 # characters of a session's device description (from the User-Agent)
SESSION_TEXT_MAX = 64           # characters of a session's node name and of each of its times
SESSION_ID_LEN = 16             # hex digits of a session's public id (``session_id``)

# ---- session data: a web session's whole dict, packed by the web, under its session id ----------

SESSION_DATA_MAX = 4096         # bytes of a session's packed data
SID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")  # URL-safe base64: 32 random bytes are 43 characters


class SortedKeys:
    """A set of keys that answers "which start with this prefix, in order" without sorting each time.

    Records are read by prefix (a user's ``<username>/``) on every page and by
    ``record_items``; sorting a namespace per read cost 0.7 ms on the daemon's
    loop and 2.6 ms per page in the web at 10,000 records.  The keys are sorted
    again only after the set changed, and ``bisect`` finds the prefix.  The web
    reads from request threads while its mirror thread writes: a sort made from
    a set that changed meanwhile carries the older generation, so the next
    read sorts again rather than trusting it.
    """

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._generation = 0
        self._sorted: tuple[int, list[str]] = (-1, [])

    def add(self, key: str) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self._generation += 1

    def discard(self, key: str) -> None:
        if key in self._keys:
            self._keys.discard(key)
            self._generation += 1

    def starting_with(self, prefix: str) -> list[str]:
        generation, keys = self._generation, self._sorted[1]
        if self._sorted[0] != generation:
            keys = sorted(self._keys)  # one C call: no other thread runs in between
            self._sorted = (generation, keys)
        found = []
        for i in range(bisect_left(keys, prefix), len(keys)):
            if not keys[i].startswith(prefix):
                break
            found.append(keys[i])
        return found


def stored_record(entry: Entry) -> StoredRecord:
    """A record entry as the durable store keeps it (records never expire, so no expiry)."""
    return StoredRecord(entry.key, entry.hlc, entry.origin, entry.value)


def record_entry(record: StoredRecord) -> Entry:
    """The cache entry a stored record rebuilds, version included."""
    return Entry("r", record.key, record.hlc, record.origin, record.value, 0)


def record_key(namespace: str, key: str) -> str:
    """The entry key of a record: the namespace has no "/", so the first "/" splits them again."""
    return f"{namespace}/{key}"


def split_record_key(entry_key: str) -> tuple[str, str]:
    namespace, _, key = entry_key.partition("/")
    return namespace, key


def packed_size(value: Any) -> int:
    """A record value's size as the limit counts it; raises TypeError/ValueError when msgpack cannot pack it."""
    return len(msgpack.packb(value, use_bin_type=True))


def record_problem(namespace: Any, key: Any, value: Any = None) -> tuple[str, str] | None:
    """(code, message) when a record breaks a limit, else None: one rule for the ipc op and the wire."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        return "invalid", "a record namespace is 1 to 64 of a-z, 0-9, '_', '.' and '-'"
    if not isinstance(key, str) or not 0 < len(key) <= RECORD_KEY_MAX:
        return "invalid", f"a record key is 1 to {RECORD_KEY_MAX} characters"
    try:
        size = packed_size(value)
    except (TypeError, ValueError, OverflowError):
        return "invalid", "a record value must be packable with msgpack"
    if size > RECORD_VALUE_MAX:
        return "too_large", f"a record value is at most {RECORD_VALUE_MAX} bytes packed (this one is {size})"
    return None


# ---- the registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """What one kind of entry is, for everything that handles entries."""

    code: str                       # the one letter on the wire
    name: str                       # for people: "user", "session", ...
    plural: str
    schema: Mapping[str, type]      # the value's fields (every one required, no other allowed)
    durable: bool                   # written to the cluster's store, rebuilt from it at boot
    mirrored: bool                  # sent on the feed to the web's mirror
    owner: Callable[[str, Any], str | None]      # (key, value) -> the username it belongs to, if any
    describe: Callable[[Entry], str]             # a few words for ``tap``
    shown: Mapping[str, str] = field(default_factory=dict)  # row field -> value field, in redacted rows
    secret: frozenset[str] = frozenset()         # value fields never shown outside the daemon
    secret_key: bool = False                     # the key itself is a credential (a session token)
    ended_wins: bool = False                     # a tombstone beats every live version, whatever the versions
    key_ok: Callable[[str], bool] = lambda key: 0 < len(key) <= KEY_MAX
    value_problem: Callable[[Entry], str | None] = lambda entry: None  # a rule beyond the schema

    def shown_key(self, key: str) -> str:
        return key[:8] + "…" if self.secret_key else key

    def redacted(self, entry: Entry) -> dict[str, Any]:
        """A row for the CLI and tools: never a secret field, never a whole secret key."""
        value = entry.value
        row: dict[str, Any] = {"kind": entry.kind, "name": self.name, "key": self.shown_key(entry.key),
                               "hlc": entry.hlc, "origin": entry.origin, "expires": entry.expires,
                               "tombstone": value is None}
        for shown, source in self.shown.items():
            row[shown] = value[source] if value is not None else None
        return row


def _user_problem(entry: Entry) -> str | None:
    if entry.value is not None and (entry.value["id"] != entry.origin or entry.value["username"] != entry.key):
        return "a user entry's origin is its id and its key its username"
    return None


def _record_key_ok(key: str) -> bool:
    namespace, sep, own = key.partition("/")
    return bool(sep) and NAMESPACE_RE.fullmatch(namespace) is not None and 0 < len(own) <= RECORD_KEY_MAX


def _record_problem(entry: Entry) -> str | None:
    if entry.value is None:
        return None
    problem = record_problem(*split_record_key(entry.key), entry.value["v"])
    return problem[1] if problem else None


def _record_owner(key: str, value: Any) -> str | None:
    """By convention a per-user record's key starts with "<username>/"."""
    own = split_record_key(key)[1]
    return own.split("/", 1)[0] if "/" in own else None


def session_data_problem(data: bytes) -> str | None:
    """Why a session's packed data is refused (its size), else None: one rule for the ipc op and the wire."""
    if len(data) > SESSION_DATA_MAX:
        return f"session data is at most {SESSION_DATA_MAX} bytes packed (this one is {len(data)})"
    return None


def _sid_ok(key: str) -> bool:
    return SID_RE.fullmatch(key) is not None


def _session_data_problem(entry: Entry) -> str | None:
    return None if entry.value is None else session_data_problem(entry.value["data"])


def _describe_session_data(entry: Entry) -> str:
    """Never the data, never the whole sid: only its size."""
    size = f"({len(entry.value['data'])} bytes)" if entry.value is not None else "(destroyed)"
    return f"session data {entry.key[:8]}… {size}"


def device_problem(device: str) -> str | None:
    """Why a session's device description is refused, else None: one rule for the ipc op and the wire."""
    if len(device) > DEVICE_MAX or not device.isprintable():
        return f"a device description is at most {DEVICE_MAX} printable characters"
    return None


def _session_problem(entry: Entry) -> str | None:
    if entry.value is None:
        return None
    if any(len(entry.value[name]) > SESSION_TEXT_MAX for name in ("node", "created_at", "last_seen")):
        return f"a session's node and times are at most {SESSION_TEXT_MAX} characters"
    return device_problem(entry.value["device"])


def session_id(token: str) -> str:
    """What people and tools see of a session: not the token, and no way back to it (a hash's first 64 bits)."""
    return hashlib.sha256(token.encode()).hexdigest()[:SESSION_ID_LEN]


def _tomb(entry: Entry, live: str, dead: str) -> str:
    return live if entry.value is not None else dead


USER = Kind(
    "u", "user", "users", {"id": str, "username": str, "password_hash": str, "created_at": str},
    durable=True, mirrored=False, owner=lambda key, value: key,
    describe=lambda e: f"user {e.key}" + _tomb(e, "", " (deleted)"),
    shown={"id": "id", "created_at": "created_at"}, secret=frozenset({"password_hash"}),
    value_problem=_user_problem)
SESSION = Kind(
    # node: where it was made; created_at, last_seen: ISO text by the clock of the node that wrote them;
    # device: a few printable words the web made of the User-Agent (``DEVICE_MAX`` at most)
    "s", "session", "sessions",
    {"uid": str, "user": str, "node": str, "created_at": str, "last_seen": str, "device": str},
    durable=False, mirrored=True, owner=lambda key, value: value["user"] if value else None,
    describe=lambda e: f"session {e.key[:8]}… " + (f"of {e.value['user']}" if e.value else "revoked"),
    shown={"user": "user", "node": "node", "created_at": "created_at", "last_seen": "last_seen"},
    secret_key=True, ended_wins=True, value_problem=_session_problem)
FAILURES = Kind(
    "t", "login failure count", "login failure counts", {"n": int},
    durable=False, mirrored=False, owner=lambda key, value: key.rsplit("@", 1)[0],  # "<subject>@<node>"
    describe=lambda e: f"failures {e.key} " + (f"= {e.value['n']}" if e.value else "reset"),
    shown={"failures": "n"})
RECORD = Kind(
    "r", "record", "records", {"v": object},
    durable=True, mirrored=True, owner=_record_owner,
    describe=lambda e: f"record {e.key}" + _tomb(e, "", " (deleted)"),
    shown={"value": "v"}, key_ok=_record_key_ok, value_problem=_record_problem)
SESSION_DATA = Kind(
    # The web's session dict, opaque here (the daemon never unpacks it).  Its id is a bearer credential
    # like a token, and a destroyed session must never come back: the same lattice as sessions.
    "d", "session data", "session data", {"data": bytes},
    durable=False, mirrored=True, owner=lambda key, value: None,
    describe=_describe_session_data, secret=frozenset({"data"}), secret_key=True, ended_wins=True,
    key_ok=_sid_ok, value_problem=_session_data_problem)

KINDS: dict[str, Kind] = {k.code: k for k in (USER, SESSION, FAILURES, RECORD, SESSION_DATA)}
MIRRORED = tuple(code for code, kind in KINDS.items() if kind.mirrored)
ENDED_WINS = frozenset(code for code, kind in KINDS.items() if kind.ended_wins)


def supersedes(kind: str, new: tuple[int, str, Any], old: tuple[int, str, Any] | tuple[int, str, Any, int]) -> bool:
    """Whether ``new`` (hlc, origin, value) replaces ``old``: the one merge rule, for the cache and its tests.

    Versions decide (last writer wins), except for a kind whose ending must
    hold (``ended_wins``: sessions and session data), where the state is a lattice, live <
    ended: a revocation beats every live copy of the token whatever the
    timestamps, so no clock and no order of arrival can bring a session back.
    Between two tombstones, or two live copies, versions decide again, so
    every node keeps the same entry and the digests agree.
    """
    if kind in ENDED_WINS and (new[2] is None) != (old[2] is None):
        return new[2] is None
    return (new[0], new[1]) > (old[0], old[1])
