"""The wire format (daemon/wire.py), checked against the spec in docs/wire.md.

Frames are built here independently of ``Codec`` (msgpack + HMAC by hand, as
the spec describes them), so the tests pin the format itself and not just the
codec's agreement with itself.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logonmesh.daemon import control, wire
from logonmesh.daemon.kinds import Entry
from logonmesh.daemon.wire import MAC_SIZE, SCHEMA, VALUE_SCHEMA, Codec, WireError, check_entry, decode, wire_key

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

COOKIE = b"a cluster cookie"
KEY = wire_key(COOKIE)
NAMES = st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True)
UINT64 = st.integers(0, 2**64 - 1)

USER = ["u", "alice", 123 << 16, "0f" * 16,
        {"id": "0f" * 16, "username": "alice", "password_hash": "scrypt:x", "created_at": "2026-01-01T00:00:00+00:00"},
        0]
SESSION = ["s", "t" * 43, 124 << 16, "n1", {"uid": "0f" * 16, "user": "alice", **SESSION_META}, 1_900_000_000_000]
TOMBSTONE = ["s", "t" * 43, 125 << 16, "n2", None, 1_900_000_000_000]
USER_TOMBSTONE = ["u", "bob", 5, "n1", None, 0]
FAILURES = ["t", "alice@n1", 126 << 16, "n1", {"n": 3}, 1_900_000_000_000]
RECORD = ["r", "budget/alice/" + "9a" * 16, 127 << 16, "n1",
          {"v": {"user": "alice", "label": "rent", "cents": -120000, "created_at": "2026-01-02T00:00:00.000+00:00"}},
          0]
RECORD_TOMBSTONE = ["r", "prefs/alice", 128 << 16, "n2", None, 0]
SESSION_DATA = ["d", "d" * 43, 129 << 16, "n1", {"data": msgpack.packb({"cart": [1, 2]})}, 1_900_000_000_000]
SESSION_DATA_TOMBSTONE = ["d", "d" * 43, 130 << 16, "n2", None, 1_900_000_060_000]
H16 = b"\x01" * 16

# One valid payload per message type.  A type added to SCHEMA must be added here (and to docs/wire.md).
SAMPLES: dict[str, dict[str, Any]] = {
    "hb": {"size": 3, "digest": H16, "bus": "tcp://127.0.0.1:5000", "peer": "tcp://127.0.0.1:5001"},
    "merge": {"entries": [USER, SESSION, TOMBSTONE, USER_TOMBSTONE, FAILURES, RECORD, RECORD_TOMBSTONE,
                          SESSION_DATA, SESSION_DATA_TOMBSTONE]},
    "bye": {},
    "announce": {"bus": "tcp://127.0.0.1:5000", "peer": "tcp://127.0.0.1:5001"},
    "ack": {},
    "sync_req": {"digest": H16},
    "sync_rep": {"entries": [USER, SESSION], "digest": H16},
    "tree_req": {"root": H16, "groups": H16 * 64},
    "tree_rep": {"groups": [0, 63], "leaves": H16 * 128},
    "diff_req": {"leaves": [0, 4095], "hashes": b"\x02" * 16},
    "diff_rep": {"entries": [USER], "want": b"\x03" * 8},
    "push": {"entries": [SESSION]},
    "ping": {"n": 7, "t": 1.5},
    "pong": {"n": 7, "t": 1.5},
    "req": {"id": 1, "op": "user", "args": {"username": "alice"}},
    "rep": {"id": 1, "ok": True, "result": {"user": "alice"}, "error": None, "code": None},
    "sessions": {"entries": [SESSION, TOMBSTONE, SESSION_DATA, SESSION_DATA_TOMBSTONE]},
    "tick": {},
    "mon": {"socket": "bus-pub", "event": "ACCEPTED", "endpoint": "tcp://127.0.0.1:5000", "value": 12, "t": 1.5},
}


def pack(fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def sign(body: bytes, key: bytes = KEY) -> bytes:
    """frame = body || HMAC-SHA256(key, body), exactly as docs/wire.md says."""
    return body + hmac.new(key, body, hashlib.sha256).digest()


SENT_AT = 1_700_000_000_123


def envelope(type_: str = "ack", payload: Any = None, *, version: Any = 5, sender: Any = "n1",
             incarnation: Any = 9, seq: Any = 1, sent_at: Any = SENT_AT) -> bytes:
    return sign(pack([version, type_, sender, incarnation, seq, sent_at, {} if payload is None else payload]))


def reason_of(frame: bytes, key: bytes = KEY) -> str:
    with pytest.raises(WireError) as info:
        decode(key, frame)
    assert isinstance(info.value, ValueError)
    assert info.value.reason in str(info.value)
    return info.value.reason


# ---- the format itself -------------------------------------------------------


def test_every_type_has_a_sample():
    assert SAMPLES.keys() == SCHEMA.keys()


def test_key_derivation_is_sha256_of_label_and_cookie():
    assert wire_key(COOKIE) == hashlib.sha256(b"logonmesh/wire/v1" + COOKIE).digest()
    assert len(KEY) == 32
    assert wire_key(b"other") != KEY


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_round_trip_every_type(type_):
    codec = Codec(COOKIE, "n1", 42, clock=lambda: SENT_AT)
    frame = codec.encode(type_, SAMPLES[type_])
    env = decode(KEY, frame)
    assert (env.version, env.type, env.sender, env.incarnation, env.seq) == (5, type_, "n1", 42, 1)
    assert env.sent_at == SENT_AT
    assert plain(env.payload) == SAMPLES[type_]
    assert codec.decode(frame) == env
    assert all(isinstance(e, Entry) for e in env.payload.get("entries", ()))


def plain(payload: dict) -> dict:
    """A decoded payload with its typed entries as the plain lists a spec example writes."""
    return {k: [list(e) for e in v] if k == "entries" else v for k, v in payload.items()}


def test_frame_layout_matches_the_spec():
    codec = Codec(COOKIE, "node-7", 2**63, clock=lambda: SENT_AT)
    frame = codec.encode("hb", SAMPLES["hb"])
    body, mac = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
    assert MAC_SIZE == 32
    assert mac == hmac.new(KEY, body, hashlib.sha256).digest()
    assert msgpack.unpackb(body, raw=False) == [5, "hb", "node-7", 2**63, 1, SENT_AT, SAMPLES["hb"]]
    # bytes travel as msgpack bin, text as str: an independent encoder's frame is byte-identical
    assert frame == sign(pack([5, "hb", "node-7", 2**63, 1, SENT_AT, SAMPLES["hb"]]))


def test_independently_built_frame_decodes():
    env = decode(KEY, envelope("req", SAMPLES["req"], sender="web_1", incarnation=0, seq=2**64 - 1))
    assert (env.type, env.sender, env.incarnation, env.seq) == ("req", "web_1", 0, 2**64 - 1)


def test_sequence_rises_by_one_per_message_and_stream():
    bus, direct = Codec(COOKIE, "n1", 1), Codec(COOKIE, "n1", 1)
    assert [decode(KEY, bus.encode("ack", {})).seq for _ in range(5)] == [1, 2, 3, 4, 5]
    assert decode(KEY, direct.encode("ack", {})).seq == 1


@settings(max_examples=150)
@given(sender=NAMES, incarnation=UINT64, seq=st.integers(0, 2**64 - 2),
       args=st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                                                            st.text(max_size=20), st.binary(max_size=20)),
                            max_size=5))
def test_round_trip_property(sender, incarnation, seq, args):
    codec = Codec(COOKIE, sender, incarnation)
    codec.seq = seq
    env = decode(KEY, codec.encode("req", {"id": seq, "op": "x", "args": args}))
    assert (env.sender, env.incarnation, env.seq) == (sender, incarnation, seq + 1)
    assert env.payload == {"id": seq, "op": "x", "args": args}


# ---- integrity -------------------------------------------------------------------


def test_wrong_key_is_a_bad_signature():
    frame = Codec(b"another cluster", "n1", 1).encode("ack", {})
    assert reason_of(frame) == "bad_signature"
    assert reason_of(frame, key=COOKIE) == "bad_signature"  # the raw cookie is not the key


def test_unsigned_body_is_rejected():
    body = pack([5, "hb", "n1", 1, 1, SENT_AT, SAMPLES["hb"]])
    assert len(body) > MAC_SIZE
    assert reason_of(body) == "bad_signature"
    assert reason_of(pack([5, "ack", "n1", 1, 1, 0, {}])) == "truncated"  # not even a MAC's worth of bytes


@pytest.mark.parametrize("size", [0, 1, MAC_SIZE])
def test_short_frames_are_truncated(size):
    assert reason_of(b"\x00" * size) == "truncated"


FRAME = Codec(COOKIE, "n1", 77).encode("merge", SAMPLES["merge"])


@given(cut=st.integers(0, len(FRAME) - 1))
def test_any_truncation_is_rejected(cut):
    assert reason_of(FRAME[:cut]) == ("truncated" if cut <= MAC_SIZE else "bad_signature")


@given(pos=st.integers(0, len(FRAME) - 1), flip=st.integers(1, 255))
def test_a_mutated_byte_anywhere_is_rejected(pos, flip):
    mutated = bytearray(FRAME)
    mutated[pos] ^= flip
    assert reason_of(bytes(mutated)) == "bad_signature"


@given(extra=st.binary(min_size=1, max_size=40))
def test_appended_bytes_are_rejected(extra):
    assert reason_of(FRAME + extra) == "bad_signature"


@given(junk=st.binary(max_size=300))
def test_random_bytes_are_rejected(junk):
    assert reason_of(junk) in ("truncated", "bad_signature")


# ---- envelope checks (validly signed, wrong inside) ------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 6, 255, "5", None, 5.0 + 0.5])
def test_unknown_version(version):
    assert reason_of(envelope(version=version)) == "unknown_version"


@pytest.mark.parametrize("type_", ["nope", "HB", "", 7, None, b"hb", ["hb"]])
def test_unknown_type(type_):
    assert reason_of(envelope(type_)) == "unknown_type"


@pytest.mark.parametrize("body", [
    b"\xc1",                                   # a byte msgpack never uses
    b"\x97\x01",                               # a 7-array cut short
    b"\xa2\xff\xfe",                           # a str that is not UTF-8
    pack([5, "ack", "n1", 1, 1, 0, {}]) + b"\x00",  # trailing data
    pack({"version": 3}),                      # not an array
    pack(42),
    pack([5, "ack", "n1", 1, 1, {}]),          # 6 items (version 2's envelope, no sent_at)
    pack([5, "ack", "n1", 1, 1, 0, {}, 0]),    # 8 items
    pack([5, "ack", "n1", 1, 1, 0, {1: 2}]),   # a map key that is neither str nor bin
    pack([5, "ack", "n1", 1, 1, 0, []]),       # payload not a map
    pack([5, "ack", "n1", 1, 1, 0, None]),
], ids=lambda b: b[:12].hex())
def test_malformed_bodies(body):
    assert reason_of(sign(body)) == "malformed"


@pytest.mark.parametrize("sender", ["", "BAD", "a b", "x" * 33, "é", 5, None, b"n1"])
def test_bad_sender(sender):
    assert reason_of(envelope(sender=sender)) == "malformed"


@pytest.mark.parametrize("field", ["incarnation", "seq", "sent_at"])
@pytest.mark.parametrize("value", [-1, True, 1.5, "1", None, b"\x01"])
def test_bad_incarnation_seq_or_sent_at(field, value):
    assert reason_of(envelope(**{field: value})) == "malformed"


# ---- payload schema -----------------------------------------------------------

CANDIDATES = [1, 2.5, "text", b"bin", [], {}, None, True]


def _bad_values(kind: type | tuple) -> list:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad = [v for v in CANDIDATES if not isinstance(v, kinds)]
    if int in kinds:
        bad.append(True)  # a bool is not an int on this wire
    return bad


SCHEMA_CASES = [(t, f, v) for t, fields in SCHEMA.items() for f, k in fields.items() for v in _bad_values(k)]


@pytest.mark.parametrize("type_,field", [(t, f) for t, fields in SCHEMA.items() for f in fields])
def test_missing_field(type_, field):
    payload = dict(SAMPLES[type_])
    del payload[field]
    assert reason_of(envelope(type_, payload)) == "schema"


@pytest.mark.parametrize("type_", sorted(SCHEMA))
def test_unknown_field(type_):
    assert reason_of(envelope(type_, dict(SAMPLES[type_], extra=1))) == "schema"


@pytest.mark.parametrize("type_,field,value", SCHEMA_CASES, ids=[f"{t}.{f}={v!r}" for t, f, v in SCHEMA_CASES])
def test_wrong_type(type_, field, value):
    assert reason_of(envelope(type_, dict(SAMPLES[type_], **{field: value}))) == "schema"


@pytest.mark.parametrize("payload", [
    {"size": 3, "digest": H16, "bus": "b", "peer": "p", b"bin-key": 1, "text-key": 2},
    {b"size": 3, "digest": H16, "bus": "b", "peer": "p"},
])
def test_mixed_key_types_are_a_schema_error(payload):
    """Keys may arrive as bin as well as str; naming the odd ones out must not crash."""
    assert reason_of(envelope("hb", payload)) == "schema"


def _entry(i: int, value: Any) -> list:
    entry = list(USER)
    entry[i] = value
    return entry


GOOD_VALUE = USER[4]
BAD_ENTRIES = {
    "not a list": "u",
    "a map": {"kind": "u"},
    "5 items": USER[:5],
    "7 items": USER + [0],
    "kind x": _entry(0, "x"),
    "kind None": _entry(0, None),
    "kind bin": _entry(0, b"u"),
    "empty key": _entry(1, ""),
    "key 257 chars": _entry(1, "k" * 257),
    "key int": _entry(1, 5),
    "key bin": _entry(1, b"alice"),
    "hlc negative": _entry(2, -1),
    "hlc bool": _entry(2, True),
    "hlc float": _entry(2, 1.5),
    "hlc str": _entry(2, "1"),
    "origin bad": _entry(3, "BAD!"),
    "origin empty": _entry(3, ""),
    "origin long": _entry(3, "o" * 33),
    "origin int": _entry(3, 7),
    "value list": _entry(4, ["alice"]),
    "value missing field": _entry(4, {k: v for k, v in GOOD_VALUE.items() if k != "password_hash"}),
    "value extra field": _entry(4, dict(GOOD_VALUE, admin=True)),
    "value wrong type": _entry(4, dict(GOOD_VALUE, id=5)),
    "session value in a user": _entry(4, {"uid": "x", "user": "alice", **SESSION_META}),
    "user value in a session": ["s", "tok", 1, "n1", GOOD_VALUE, 5],
    "failure count not an int": ["t", "alice@n1", 1, "n1", {"n": "3"}, 5],
    "failure count with a user value": ["t", "alice@n1", 1, "n1", GOOD_VALUE, 5],
    "kind b (the budget kind of version 1)": ["b", "e1", 1, "n1", RECORD[4]["v"], 0],
    "record value not wrapped in v": ["r", "budget/e1", 1, "n1", RECORD[4]["v"], 0],
    "record value with another field": ["r", "budget/e1", 1, "n1", dict(RECORD[4], w=1), 0],
    "record key without a namespace": ["r", "e1", 1, "n1", RECORD[4], 0],
    "record namespace in capitals": ["r", "Budget/e1", 1, "n1", RECORD[4], 0],
    "record namespace of 65 chars": ["r", "n" * 65 + "/e1", 1, "n1", RECORD[4], 0],
    "record key empty": ["r", "budget/", 1, "n1", RECORD[4], 0],
    "record key of 201 chars": ["r", "budget/" + "k" * 201, 1, "n1", RECORD[4], 0],
    "record value over 4096 bytes": ["r", "budget/e1", 1, "n1", {"v": "x" * 4094}, 0],
    "failure count a bool": ["t", "alice@n1", 1, "n1", {"n": True}, 5],
    "session data as text": ["d", "d" * 43, 1, "n1", {"data": "not bytes"}, 5],
    "session data over 4096 bytes": ["d", "d" * 43, 1, "n1", {"data": b"x" * 4097}, 5],
    "session data with another field": ["d", "d" * 43, 1, "n1", {"data": b"", "user": "alice"}, 5],
    "session id of 15 chars": ["d", "d" * 15, 1, "n1", {"data": b""}, 5],
    "session id of 65 chars": ["d", "d" * 65, 1, "n1", {"data": b""}, 5],
    "session id not url-safe base64": ["d", "d" * 42 + "+", 1, "n1", {"data": b""}, 5],
    "user whose origin is not its id": _entry(3, "n1"),
    "user whose key is not its username": _entry(1, "bob"),
    "expires negative": _entry(5, -1),
    "expires bool": _entry(5, True),
    "expires float": _entry(5, 1.5),
    "expires None": _entry(5, None),
}


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_bad_entries(name):
    entry = BAD_ENTRIES[name]
    with pytest.raises(WireError) as info:
        check_entry(entry)
    assert info.value.reason == "schema"
    for type_ in ("merge", "sync_rep", "diff_rep", "push"):
        # one bad entry among good ones rejects the whole message
        payload = dict(SAMPLES[type_], entries=[USER, entry, SESSION])
        assert reason_of(envelope(type_, payload)) == "schema"


@pytest.mark.parametrize("entry", [
    ["s", "k" * 256, *SESSION[2:]], _entry(2, 0), _entry(2, 2**64 - 1), _entry(5, 0), _entry(5, 2**64 - 1),
    USER_TOMBSTONE, TOMBSTONE, ["s", SESSION[1], SESSION[2], "-", *SESSION[4:]],
    RECORD, RECORD_TOMBSTONE, ["r", "n" * 64 + "/" + "k" * 200, 1, "n1", {"v": None}, 0],
    ["r", "a.b_c-9/k", 1, "n1", {"v": "x" * 4093}, 0],   # 4096 bytes packed: the limit itself
    ["r", "ns/a/b/c", 1, "n1", {"v": [1, {"deep": b"bin"}]}, 0],
    SESSION_DATA, SESSION_DATA_TOMBSTONE, ["d", "A-_z" * 4, 1, "n1", {"data": b""}, 1],
    ["d", "d" * 64, 1, "n1", {"data": b"\xff" * 4096}, 2**64 - 1],   # the longest id, the largest data
])
def test_edge_entries_are_valid(entry):
    assert check_entry(entry) == Entry(*entry)
    assert decode(KEY, envelope("merge", {"entries": [entry]})).payload["entries"] == [Entry(*entry)]


def test_value_schema_matches_the_spec():
    assert set(VALUE_SCHEMA) == set(wire.ENTRY_KINDS) == {"u", "s", "t", "r", "d"}
    assert VALUE_SCHEMA["u"] == {"id": str, "username": str, "password_hash": str, "created_at": str}
    assert VALUE_SCHEMA["s"] == {"uid": str, "user": str, "node": str, "created_at": str, "last_seen": str,
                                 "device": str}
    assert VALUE_SCHEMA["t"] == {"n": int}
    assert VALUE_SCHEMA["r"] == {"v": object}
    assert VALUE_SCHEMA["d"] == {"data": bytes}


def test_docs_name_every_type_field_kind_and_op():
    """docs/wire.md is the spec: whatever the code accepts must be written down there."""
    doc = (Path(__file__).parent.parent / "docs" / "wire.md").read_text()
    missing = [f"type {t}" for t in SCHEMA if f"`{t}`" not in doc]
    missing += [f"{t}.{f}" for t, fields in SCHEMA.items() for f in fields if f"`{f}`" not in doc]
    missing += [f"kind {k}" for k in wire.ENTRY_KINDS if f"`{k}`" not in doc]
    missing += [f"{k} value field {f}" for k, fields in VALUE_SCHEMA.items() for f in fields if f"`{f}`" not in doc]
    missing += [f"op {op}" for op in control.OPS if f"`{op}`" not in doc]
    missing += [f"{op} arg {a}" for op, args in control.OPS.items() for a in args if f"`{a}`" not in doc]
    missing += [f"error code {c}" for c in wire.ERROR_CODES if f"`{c}`" not in doc]
    missing += [f"version {wire.VERSION}" for _ in [0] if f"version {wire.VERSION}" not in doc]
    assert not missing, f"docs/wire.md does not mention: {missing}"


def test_socket_type_sets_name_known_types_only():
    sets = (wire.BUS_TYPES, wire.PEER_REQUESTS, wire.PEER_REPLIES)
    for types in sets:
        assert types <= SCHEMA.keys()
    assert not (wire.BUS_TYPES & wire.PEER_REQUESTS or wire.BUS_TYPES & wire.PEER_REPLIES
                or wire.PEER_REQUESTS & wire.PEER_REPLIES)


@pytest.mark.parametrize("type_,payload", [
    ("diff_req", {"leaves": [0], "hashes": b"\x00" * 7}),
    ("diff_req", {"leaves": [0], "hashes": b"\x00" * 9}),
    ("diff_req", {"leaves": [2**16], "hashes": b""}),
    ("diff_req", {"leaves": [-1], "hashes": b""}),
    ("diff_req", {"leaves": [True], "hashes": b""}),
    ("diff_req", {"leaves": ["0"], "hashes": b""}),
    ("tree_rep", {"groups": [2**16], "leaves": b""}),
    ("tree_rep", {"groups": [1.0], "leaves": b""}),
    ("diff_rep", {"entries": [], "want": b"\x00" * 12}),
    ("diff_rep", {"entries": [], "want": b"\x00"}),
])
def test_bad_repair_items(type_, payload):
    assert reason_of(envelope(type_, payload)) == "schema"


# ---- nothing but WireError, whatever arrives signed --------------------------------

MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(type_=st.sampled_from(sorted(SCHEMA)), data=st.data())
def test_signed_garbage_only_ever_raises_wire_error(type_, data):
    """Fuzz each type: start from a valid payload, replace or add fields with arbitrary msgpack values."""
    payload: dict = dict(SAMPLES[type_])
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from(sorted(SCHEMA[type_]) + ["x", "entries"]) | st.binary(max_size=4))
        payload[field] = data.draw(MSGPACK_VALUES)
    try:
        env = decode(KEY, envelope(type_, payload))
    except WireError as exc:
        assert exc.reason in ("schema", "malformed")
    else:  # whatever passes must really fit the schema
        assert env.payload.keys() == SCHEMA[type_].keys()


@settings(max_examples=100)
@given(fields=st.lists(MSGPACK_VALUES, min_size=6, max_size=6))
def test_signed_garbage_envelopes_only_raise_wire_error(fields):
    try:
        decode(KEY, sign(pack(fields)))
    except WireError:
        pass


# ---- the control protocol's argument check (ipc) -----------------------------------


@pytest.mark.parametrize("op,args", [
    ("nope", {}),
    ("ping", {"x": 1}),
    ("register", {"username": "a"}),
    ("register", {"username": "a", "password_hash": 5}),
    ("user", {"username": None}),
    ("cache", {"user": None, "sessions": True, "limit": True}),
    ("lossy", {"fraction": 1}),
    ("ping", {b"x": 1, "y": 2}),
])
def test_control_rejects_bad_requests(op, args):
    assert isinstance(control.check_args(op, args), str)


@pytest.mark.parametrize("op,args", [
    ("ping", {}), ("register", {"username": "a", "password_hash": "h"}),
    ("cache", {"user": None, "sessions": False, "limit": 10}), ("lossy", {"fraction": 0.5}),
])
def test_control_accepts_good_requests(op, args):
    assert control.check_args(op, args) is None


@settings(max_examples=100)
@given(op=st.sampled_from(sorted(control.OPS)) | st.text(max_size=10),
       args=st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), MSGPACK_VALUES, max_size=4))
def test_control_check_never_raises(op, args):
    assert control.check_args(op, args) is None or isinstance(control.check_args(op, args), str)


def test_every_error_code_the_daemon_answers_is_a_known_one():
    """Codes are a closed set: whatever control.py (and the record limits) can answer is in ERROR_CODES."""
    import re
    root = Path(__file__).parent.parent / "daemon"
    source = (root / "control.py").read_text() + (root / "node.py").read_text()
    used = set(re.findall(r'code="([a-z_]+)"', source))
    used |= set(re.findall(r'return "([a-z_]+)", ', (root / "kinds.py").read_text()))
    used |= set(re.findall(r'"(bad_args|unknown_op|bad_request|internal)"', source))
    assert used and used <= wire.ERROR_CODES, used - wire.ERROR_CODES
    assert wire.ERROR_CODES - used == set(), "a code nobody answers should not be listed"
