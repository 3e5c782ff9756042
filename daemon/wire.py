"""The one wire format of logonmesh, used on the bus, the peer socket and the ipc socket.

A message is a single ZeroMQ frame (one frame is several times cheaper than a
multipart send in pyzmq)::

    frame   = body || mac
    body    = msgpack([version, type, sender, incarnation, seq, sent_at, payload])
    mac     = HMAC-SHA256(wire_key, body)            -- 32 bytes
    wire_key = SHA256(b"logonmesh/wire/v1" || cookie)

``seq`` is per sender and per stream: on the bus it rises by one with every
message, so a receiver sees a gap when PUB/SUB drops one.  ``sent_at`` is the
sender's wall clock (ms since the epoch) when it signed the frame: receivers
measure each peer's clock offset from it (``daemon.offsets``) and rebase the
expiries a frame carries into their own clock.  ``payload`` is a
map whose fields are fixed by ``SCHEMA`` below; the schema is also printed in
docs/wire.md.  Anything that fails a check raises ``WireError`` with a short
reason that the caller counts and logs; nothing is ever half-applied.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from logonmesh.daemon.config import NAME_RE
from logonmesh.daemon.kinds import KINDS, Entry

VERSION = 5
MAC_SIZE = 32
SHORT_HASH = 8  # bytes of an entry hash that a repair uses to name an entry
MAX_SEQ = 2**64 - 1

# Entries and their kinds are defined in daemon/kinds.py; these names are the wire's view of it.
ENTRY_KINDS = tuple(KINDS)
VALUE_SCHEMA: dict[str, dict[str, type]] = {code: dict(kind.schema) for code, kind in KINDS.items()}

# The stable codes of an ipc error reply (``rep.code``): clients switch on these, never on the message.
ERROR_CODES = frozenset({
    "taken",              # register: the username exists
    "no_such_user",       # session_create: the user is unknown here
    "invalid",            # an argument has the right type but a value the op refuses
    "too_large",          # a record value or a session's data over its limit
    "store_unavailable",  # the durable store cannot be reached or refused the write
    "unknown_op",         # no such op
    "bad_args",           # wrong argument names or types
    "bad_request",        # the request frame itself was refused (signature, schema, socket)
    "not_enabled",        # the op needs a feature this daemon runs without (trace)
    "internal",           # a bug in the daemon, logged there
})

# Which types may arrive where; anything else is refused as "wrong_socket".
BUS_TYPES = frozenset({"hb", "merge", "bye"})
PEER_REQUESTS = frozenset({"announce", "tree_req", "diff_req", "push", "sync_req", "ping"})
PEER_REPLIES = frozenset({"ack", "tree_rep", "diff_rep", "sync_rep", "pong"})

# type -> {field: python type}.  Every field is required and no other is allowed.
SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    # bus (PUB/SUB)
    "hb": {"size": int, "digest": bytes, "bus": str, "peer": str},
    "merge": {"entries": list},
    "bye": {},                                          # the last message of a daemon that leaves cleanly
    # peer socket (DEALER -> ROUTER and back)
    "announce": {"bus": str, "peer": str},
    "ack": {},
    "sync_req": {"digest": bytes},                      # full snapshot: the baseline, and for tools
    "sync_rep": {"entries": list, "digest": bytes},
    "tree_req": {"root": bytes, "groups": bytes},       # repair, step 1: my group hashes
    "tree_rep": {"groups": list, "leaves": bytes},      # step 2: my leaves of the groups that differ
    "diff_req": {"leaves": list, "hashes": bytes},      # step 3: short hashes of my entries in those leaves
    "diff_rep": {"entries": list, "want": bytes},       # step 4: what you lack, and hashes of what I lack
    "push": {"entries": list},                          # step 5: what you lacked
    "ping": {"n": int, "t": float},
    "pong": {"n": int, "t": float},
    # session feed (daemon -> its web, ipc PUB/SUB)
    "sessions": {"entries": list},
    "tick": {},
    # ipc socket (client -> daemon and back)
    "req": {"id": int, "op": str, "args": dict},
    "rep": {"id": int, "ok": bool, "result": (dict, list, type(None)), "error": (str, type(None)),
            "code": (str, type(None))},
    # monitor feed (daemon XPUB over ipc -> `logonmesh monitor`): one zmq socket event
    "mon": {"socket": str, "event": str, "endpoint": str, "value": int, "t": float},
}


class WireError(ValueError):
    """A frame that must be dropped; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    version: int
    type: str
    sender: str
    incarnation: int
    seq: int
    sent_at: int        # the sender's wall clock, ms since the epoch, when it signed the frame
    payload: dict[str, Any]


def new_incarnation(after: int = 0) -> int:
    """Microseconds since the epoch, but always above ``after`` (the last incarnation this node used).

    Receivers refuse an incarnation lower than one they have seen, so a node
    restarted with its clock stepped back must still start above its last life.
    """
    return max(time.time_ns() // 1000, after + 1)


def wall_ms() -> int:
    return int(time.time() * 1000)


def wire_key(cookie: bytes) -> bytes:
    """Derive the signing key so the raw cookie never keys more than one purpose."""
    return hashlib.sha256(b"logonmesh/wire/v1" + cookie).digest()


class Codec:
    """Encodes one sender's stream and decodes anybody's, with one key."""

    def __init__(self, cookie: bytes, sender: str, incarnation: int | None = None,
                 clock: Callable[[], int] = wall_ms) -> None:
        self._key = wire_key(cookie)
        self.sender = sender
        # Receivers refuse an incarnation older than one they have seen from this sender,
        # so a new stream must start with a larger one: microseconds since the epoch.
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        self.seq = 0
        self._clock = clock

    def encode(self, type_: str, payload: dict[str, Any]) -> bytes:
        """Sign a message with the next sequence number of this stream."""
        self.seq += 1
        body: bytes = msgpack.packb([VERSION, type_, self.sender, self.incarnation, self.seq, self._clock(), payload],
                                    use_bin_type=True)
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def decode(self, frame: bytes) -> Envelope:
        return decode(self._key, frame)


def decode(key: bytes, frame: bytes) -> Envelope:
    """Verify, unpack and validate one frame, or raise WireError."""
    if len(frame) <= MAC_SIZE:
        raise WireError("truncated", f"{len(frame)} bytes")
    body, mac = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise WireError("bad_signature")
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError("malformed", type(exc).__name__) from None
    if not isinstance(fields, list) or len(fields) != 7:
        raise WireError("malformed", "envelope is not a 7-item array")
    version, type_, sender, incarnation, seq, sent_at, payload = fields
    if version != VERSION:
        raise WireError("unknown_version", repr(version))
    if not isinstance(type_, str) or type_ not in SCHEMA:
        raise WireError("unknown_type", repr(type_)[:40])
    if not isinstance(sender, str) or not NAME_RE.match(sender):
        raise WireError("malformed", "bad sender")
    for name, value in (("incarnation", incarnation), ("seq", seq), ("sent_at", sent_at)):
        if not _uint(value):
            raise WireError("malformed", f"bad {name}")
    _check_payload(type_, payload)
    return Envelope(version, type_, sender, incarnation, seq, sent_at, payload)


def _check_payload(type_: str, payload: Any) -> None:
    schema = SCHEMA[type_]
    if not isinstance(payload, dict):
        raise WireError("malformed", "payload is not a map")
    if payload.keys() != schema.keys():
        unknown = sorted(set(payload) - set(schema), key=repr)  # keys may be str and bin at once
        missing = sorted(set(schema) - set(payload))
        raise WireError("schema", f"{type_}: unknown {unknown} missing {missing}")
    for name, kind in schema.items():
        value = payload[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise WireError("schema", f"{type_}.{name} has type {type(value).__name__}")
    if schema.get("entries") is list:
        payload["entries"] = [check_entry(entry) for entry in payload["entries"]]
    for name in ("hashes", "want"):
        if isinstance(payload.get(name), bytes) and len(payload[name]) % SHORT_HASH:
            raise WireError("schema", f"{type_}.{name} is not a whole number of hashes")
    for name in ("groups", "leaves"):
        if isinstance(payload.get(name), list) and not all(_uint(i) and i < 2**16 for i in payload[name]):
            raise WireError("schema", f"{type_}.{name} holds a bad index")


def check_entry(entry: Any) -> Entry:
    """Validate ``[kind, key, hlc, origin, value-or-None, expires_ms]`` by its kind's rules; return it typed."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 6:
        raise WireError("schema", "entry is not a 6-item array")
    kind_code, key, hlc_, origin, value, expires = entry
    kind = KINDS.get(kind_code) if isinstance(kind_code, str) else None
    if kind is None or not isinstance(key, str) or not kind.key_ok(key):
        raise WireError("schema", "bad entry kind or key")
    if not _uint(hlc_):
        raise WireError("schema", "bad entry version")
    if not isinstance(origin, str) or not NAME_RE.match(origin):
        raise WireError("schema", "bad entry origin")
    if not _uint(expires):
        raise WireError("schema", "bad entry expiry")
    typed = Entry(kind_code, key, hlc_, origin, value, expires)
    if value is not None:
        schema = kind.schema
        if not isinstance(value, dict) or value.keys() != schema.keys() or not all(
                isinstance(value[k], t) and not (t is int and isinstance(value[k], bool)) for k, t in schema.items()):
            raise WireError("schema", f"bad {kind_code} entry value")
        problem = kind.value_problem(typed)
        if problem:
            raise WireError("schema", problem)
    return typed


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ
