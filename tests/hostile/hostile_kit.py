"""What the hostile tests share: hostile frames, a rogue peer, a tally of inputs and a crash check.

How much fuzzing runs is one setting, ``LOGONMESH_FUZZ_EXAMPLES`` (default
sized for CI).  It is the number of hypothesis examples of each in-process
decoder property; each example feeds the decoder dozens of frames.  The live
tests send ``LOGONMESH_FUZZ_EXAMPLES // 10`` batches of up to 120 frames to
every socket.  For a long run on the benchmark machine::

    LOGONMESH_FUZZ_EXAMPLES=20000 pytest tests/hostile -s -p no:timeout

The total number of inputs tried is printed at the end of every run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from typing import Any, Callable, Iterable

import msgpack
import zmq
from hypothesis import strategies as st

from logonmesh.daemon import control, wire
from logonmesh.daemon.wire import MAC_SIZE
from logonmesh.daemon.cache import user_entry
from logonmesh.discovery.sqlite import open_db
from logonmesh.testing import LocalCluster, eventually
from logonmesh.discovery import NodeRow

FUZZ_EXAMPLES = int(os.environ.get("LOGONMESH_FUZZ_EXAMPLES", "500"))
LIVE_BATCHES = max(10, FUZZ_EXAMPLES // 10)
RECIPES, PER_RECIPE = 10, 11  # a live batch: up to 10 drawn frames, each with 11 scrambled variants

# Every input any hostile test fed to something, by target; printed by conftest at the end.
tally: Counter = Counter()

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=32)  # NAME_RE, but fast
UINT64 = st.integers(0, 2**64 - 1)
MSGPACK_INTS = st.integers(-2**63, 2**64 - 1)  # all msgpack can carry
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | MSGPACK_INTS | st.floats() | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | MSGPACK_INTS, inner, max_size=5),
    max_leaves=8)

# Built by the daemon's own function, so it keeps up with whatever an entry must look like.
USER_ENTRY = user_entry({"id": "0f" * 16, "username": "alice", "password_hash": "scrypt:x",
                         "created_at": "2026-01-01T00:00:00+00:00"})
_DEFAULTS: dict[type, Any] = {int: 1, float: 1.5, str: "tcp://127.0.0.1:1", bytes: b"\x01" * 16,
                              bool: True, list: [], dict: {}, type(None): None}


# ---- frames -------------------------------------------------------------------

def sign(key: bytes, body: bytes) -> bytes:
    """A frame with a valid MAC over whatever body: what only a cookie holder can make."""
    return body + hmac.new(key, body, hashlib.sha256).digest()


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def sample_payload(type_: str) -> dict[str, Any]:
    """A valid payload for any type in the schema, built from the schema itself (so new types are covered)."""
    payload = {}
    for name, kind in wire.SCHEMA[type_].items():
        kind = kind[0] if isinstance(kind, tuple) else kind
        payload[name] = [USER_ENTRY] if name == "entries" else _DEFAULTS[kind]
    if type_ in ("diff_req", "diff_rep"):
        payload["hashes" if type_ == "diff_req" else "want"] = b"\x02" * wire.SHORT_HASH
    if type_ == "req":
        payload.update(op="ping", args={})
    return payload


def refusal(key: bytes, frame: bytes, allowed: Iterable[str]) -> str | None:
    """The reason a socket that takes `allowed` types must refuse `frame`, or None if it would take it."""
    try:
        env = wire.decode(key, frame)
    except wire.WireError as exc:
        return exc.reason
    if env.type not in allowed:
        return "wrong_socket"
    if env.type == "req" and control.check_args(env.payload["op"], env.payload["args"]):
        return "bad_args"
    return None


@st.composite
def genuine_frames(draw: Callable, key: bytes, types: Iterable[str] | None = None) -> bytes:
    """A well-formed, correctly signed frame of some type: the raw material of the mutations."""
    type_ = draw(st.sampled_from(sorted(types or wire.SCHEMA)))
    fields = [wire.VERSION, type_, draw(NAMES), draw(UINT64), draw(UINT64), draw(UINT64), sample_payload(type_)]
    return sign(key, pack(fields))


@st.composite
def mutated(draw: Callable, frame: bytes) -> bytes:
    """One damaging edit of a frame: bit flip, truncation, extension, splice or a lost MAC."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "unsigned"]))
    if how == "flip":
        pos = draw(st.integers(0, len(frame) - 1))
        return frame[:pos] + bytes([frame[pos] ^ (1 << draw(st.integers(0, 7)))]) + frame[pos + 1:]
    if how == "truncate":
        return frame[:draw(st.integers(0, len(frame) - 1))]
    if how == "extend":
        return frame + draw(st.binary(min_size=1, max_size=64))
    if how == "splice":
        i = draw(st.integers(0, len(frame)))
        j = draw(st.integers(i, len(frame)))
        return frame[:i] + draw(st.binary(max_size=32)) + frame[j:]
    return frame[:-wire.MAC_SIZE]


def scramble(body: bytes, rnd: random.Random) -> bytes:
    """A cheap byte-level edit of a msgpack body (to be signed afterwards): the volume behind each example."""
    if not body:
        return bytes([rnd.randrange(256)])
    i = rnd.randrange(len(body))
    how = rnd.randrange(6)
    if how == 0:
        return body[:i] + bytes([body[i] ^ (1 << rnd.randrange(8))]) + body[i + 1:]
    if how == 1:
        return body[:i] + bytes([rnd.choice(INTERESTING_BYTES)]) + body[i + 1:]
    if how == 2:
        return body[:i]
    if how == 3:
        return body[:i] + body[i + 1:]
    if how == 4:
        return body[:i] + rnd.randbytes(rnd.randrange(1, 9)) + body[i:]
    j = rnd.randrange(i, len(body) + 1)
    return body[:i] + body[i:j] * 2 + body[j:]


def expand(frames: list[bytes], key: bytes, rnd: random.Random, per_frame: int) -> list[bytes]:
    """Each frame, then `per_frame` scrambled variants of it: half re-signed with the key, half not.

    Hypothesis builds the recipes (costly); this loop multiplies them (cheap),
    so a live batch can hold a hundred frames without minutes of generation.
    """
    out = []
    for frame in frames:
        out.append(frame)
        body = frame[:-MAC_SIZE] if len(frame) > MAC_SIZE else frame
        for i in range(per_frame):
            body = scramble(body, rnd)
            out.append(sign(key, body) if i % 2 else body + frame[-MAC_SIZE:])
    return out


# msgpack type bytes worth planting: nil, bools, bin/str/array/map headers of every width, ext, huge lengths
INTERESTING_BYTES = [0xc0, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4,
                     0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x96, 0x80, 0x8f, 0xa0, 0xbf, 0xff, 0x7f]


@st.composite
def wrong_schema_bodies(draw: Callable, types: Iterable[str] | None = None) -> bytes:
    """An envelope with one to three of its parts replaced: version, type, sender, numbers or payload fields."""
    type_ = draw(st.sampled_from(sorted(types or wire.SCHEMA)))
    payload = sample_payload(type_)
    fields: list[Any] = [wire.VERSION, type_, draw(NAMES), draw(UINT64), draw(UINT64), draw(UINT64), payload]
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["envelope", "field", "drop", "add", "entry"]))
        if where == "envelope":
            fields[draw(st.integers(0, 6))] = draw(MSGPACK_VALUES)
        elif where == "field" and payload:
            payload[draw(st.sampled_from(list(payload)))] = draw(MSGPACK_VALUES)
        elif where == "drop" and payload:
            payload.pop(draw(st.sampled_from(list(payload))))
        elif where == "add":
            payload[draw(st.text(max_size=8) | st.binary(max_size=4))] = draw(MSGPACK_VALUES)
        elif where == "entry" and "entries" in payload:
            entry = list(USER_ENTRY)
            entry[draw(st.integers(0, 5))] = draw(MSGPACK_VALUES)
            payload["entries"] = [entry]
    if draw(st.booleans()):
        fields = fields[:draw(st.integers(0, 5))] + draw(st.lists(MSGPACK_VALUES, max_size=2))
    return pack(fields)


def other_key() -> bytes:
    return wire.wire_key(b"not the cluster cookie")


@st.composite
def hostile_frames(draw: Callable, key: bytes, types: Iterable[str] | None = None) -> bytes:
    """Any of the hostile kinds, genuine-looking or not; `types` steers the genuine material."""
    kind = draw(st.sampled_from(["random", "mutated", "wrong_key", "signed_garbage", "signed_msgpack",
                                 "wrong_schema", "genuine"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "mutated":
        return draw(mutated(draw(genuine_frames(key, types))))
    if kind == "wrong_key":
        return draw(genuine_frames(other_key(), types))
    if kind == "signed_garbage":
        return sign(key, draw(st.binary(max_size=256)))
    if kind == "signed_msgpack":
        return sign(key, pack(draw(MSGPACK_VALUES)))
    if kind == "wrong_schema":
        return sign(key, draw(wrong_schema_bodies(types)))
    return draw(genuine_frames(key, types))  # valid, but maybe of a type this socket does not take


@st.composite
def bad_requests(draw: Callable, key: bytes) -> bytes:
    """A correctly signed ipc request whose op or arguments the control protocol must refuse."""
    op = draw(st.sampled_from(sorted(control.OPS)) | st.text(max_size=12))
    args = draw(st.dictionaries(st.text(max_size=10), MSGPACK_VALUES, max_size=4))
    if control.check_args(op, args) is None:
        args["unexpected"] = 1
    fields = [wire.VERSION, "req", draw(NAMES), draw(UINT64), draw(UINT64), draw(UINT64),
              {"id": draw(st.integers(0, 2**32)), "op": op, "args": args}]
    return sign(key, pack(fields))


# ---- a rogue peer --------------------------------------------------------------

class Rogue:
    """An impostor in this test process: a registry row, an XPUB the daemons subscribe to, a ROUTER they dial.

    XPUB (verbose) rather than PUB because it tells us when each daemon's
    subscription has arrived, so a batch is never sent into the slow-joiner gap.
    Its row's heartbeat is far in the future, so no daemon prunes it meanwhile.
    """

    def __init__(self, db: str, name: str = "rogue") -> None:
        self.db_path, self.name = db, name
        self.ctx = zmq.Context()
        self.xpub = self._bind(zmq.XPUB)
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.xpub.sndhwm = 0  # a batch must reach the daemons whole: no silent drop at the HWM
        self.router = self._bind(zmq.ROUTER)
        self.subscriptions = 0
        self.received: list[tuple[bytes, bytes]] = []  # (identity, frame) of what daemons sent us
        self.keep: list[zmq.Socket] = []  # more sockets of this context, closed with it

    def _bind(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:0")
        return sock

    @property
    def bus(self) -> str:
        return self.xpub.last_endpoint.decode()

    @property
    def peer(self) -> str:
        return self.router.last_endpoint.decode()

    def register(self) -> None:
        now = time.time()
        row = NodeRow(self.name, self.bus, self.peer, "rogue-host", os.getpid(), wire.new_incarnation(),
                      now, now + 3600)
        db = open_db(self.db_path)
        try:
            db["clusters"].upsert(asdict(row), pk="id")
        finally:
            db.conn.close()

    def unregister(self) -> None:
        db = open_db(self.db_path)
        try:
            db.execute("delete from clusters where id = ?", [self.name])
        finally:
            db.conn.close()

    def wait_subscribers(self, n: int, timeout: float = 10.0) -> None:
        """Until n subscriptions (one per daemon that followed our bus) have arrived."""
        def enough() -> None:
            while self.xpub.poll(0):
                if self.xpub.recv()[:1] == b"\x01":
                    self.subscriptions += 1
            assert self.subscriptions >= n, f"{self.subscriptions} of {n} daemons subscribed"
        eventually(enough, timeout=timeout)

    def drain(self) -> list[tuple[bytes, bytes]]:
        """Whatever the daemons sent to our ROUTER (announces, requests) since the last call."""
        got = []
        while self.router.poll(0):
            parts = self.router.recv_multipart()
            got.append((parts[0], parts[-1]))
        self.received.extend(got)
        return got

    def publish(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            self.xpub.send(frame)

    def publish_one(self, frame: bytes) -> None:
        self.xpub.send(frame)

    def close(self) -> None:
        try:
            self.unregister()
        finally:
            for sock in [self.xpub, self.router, *self.keep]:
                sock.close(0)
            self.ctx.term()


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 0
    sock.connect(endpoint)
    return sock


# ---- crash checks and counters --------------------------------------------------

def assert_no_crash(cluster: LocalCluster) -> None:
    """Every process still runs, and no log holds a traceback (a handler that blew up, even if caught)."""
    for node in cluster.nodes:
        for proc in node.procs:
            assert proc.alive, f"{proc.label} died:\n{proc.logs()[-3000:]}"
    logs = cluster.all_logs()
    assert "Traceback" not in logs, logs[-5000:]


def stats(node: Any) -> Counter:
    return Counter(node.status()["stats"])


def drops(before: Counter, after: Counter) -> Counter:
    """What was refused between two status snapshots, by reason (drop_<reason> counters)."""
    return Counter({k[len("drop_"):]: after[k] - before[k] for k in after
                    if k.startswith("drop_") and after[k] != before[k]})
