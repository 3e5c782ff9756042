"""The registry of entry kinds (daemon/kinds.py) and the Entry type: pure logic, no process."""

from __future__ import annotations

import msgpack
import pytest

from logonmesh.daemon import cache as cache_mod
from logonmesh.daemon import wire
from logonmesh.daemon.cache import Cache
from logonmesh.daemon.kinds import (
    KINDS, RECORD_KEY_MAX, RECORD_VALUE_MAX, SESSION_DATA_MAX, Entry, packed_size, record_key, record_problem,
    session_data_problem, split_record_key, supersedes,
)

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

COOKIE = b"a cluster cookie"
USER = Entry("u", "alice", 1 << 16, "0f" * 16,
             {"id": "0f" * 16, "username": "alice", "password_hash": "scrypt:do-not-print-me",
              "created_at": "2026-01-01T00:00:00+00:00"}, 0)
SESSION = Entry("s", "T" * 43, 2 << 16, "n1", {"uid": "0f" * 16, "user": "alice", **SESSION_META}, 1_900_000_000_000)
FAILURES = Entry("t", "user:alice@n1", 3 << 16, "n1", {"n": 2}, 1_900_000_000_000)
RECORD = Entry("r", "budget/alice/9a", 4 << 16, "n2", {"v": {"label": "rent", "cents": -5}}, 0)
SID = "S1d-" + "x" * 40  # 43 characters, as 32 random bytes in URL-safe base64
SESSION_DATA = Entry("d", SID, 5 << 16, "n1", {"data": msgpack.packb({"cart": "do-not-print-me"})}, 1_900_000_000_000)
SAMPLES = {"u": USER, "s": SESSION, "t": FAILURES, "r": RECORD, "d": SESSION_DATA}


def test_the_registry_is_the_one_source_of_the_kinds():
    assert set(KINDS) == {"u", "s", "t", "r", "d"} == set(SAMPLES)
    assert wire.ENTRY_KINDS == tuple(KINDS) == cache_mod.KINDS
    assert {code: dict(k.schema) for code, k in KINDS.items()} == wire.VALUE_SCHEMA
    assert all(code == kind.code for code, kind in KINDS.items())
    assert {c for c, k in KINDS.items() if k.durable} == {"u", "r"}
    assert {c for c, k in KINDS.items() if k.mirrored} == {"s", "r", "d"} == set(cache_mod.FEED_KINDS)
    assert {c for c, k in KINDS.items() if k.ended_wins} == {"s", "d"}
    assert {c for c, k in KINDS.items() if k.secret_key} == {"s", "d"}


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_a_redacted_row_never_shows_a_secret(code):
    kind, entry = KINDS[code], SAMPLES[code]
    assert not kind.secret & set(kind.shown.values()), "a secret field is never a shown one"
    row = kind.redacted(entry)
    text = repr(row)
    assert "do-not-print-me" not in text and "T" * 43 not in text and SID not in text
    assert row["kind"] == code and row["name"] == kind.name and row["hlc"] == entry.hlc
    assert row["tombstone"] is False and kind.redacted(entry._replace(value=None))["tombstone"] is True
    assert set(kind.shown) <= set(row)


def test_rows_and_descriptions_say_what_each_kind_is():
    assert KINDS["s"].redacted(SESSION)["key"] == "TTTTTTTT…"
    assert KINDS["t"].redacted(FAILURES)["failures"] == 2
    assert KINDS["r"].redacted(RECORD)["value"] == {"label": "rent", "cents": -5}
    assert KINDS["d"].redacted(SESSION_DATA)["key"] == "S1d-xxxx…"
    assert set(KINDS["d"].redacted(SESSION_DATA)) == {"kind", "name", "key", "hlc", "origin", "expires", "tombstone"}
    described = {code: KINDS[code].describe(entry) for code, entry in SAMPLES.items()}
    size = len(SESSION_DATA.value["data"])
    assert described == {"u": "user alice", "s": "session TTTTTTTT… of alice", "t": "failures user:alice@n1 = 2",
                         "r": "record budget/alice/9a", "d": f"session data S1d-xxxx… ({size} bytes)"}
    assert KINDS["d"].describe(SESSION_DATA._replace(value=None)) == "session data S1d-xxxx… (destroyed)"
    assert KINDS["r"].describe(RECORD._replace(value=None)) == "record budget/alice/9a (deleted)"
    assert KINDS["s"].describe(SESSION._replace(value=None)).endswith("revoked")


def test_owners():
    owner = {code: KINDS[code].owner(e.key, e.value) for code, e in SAMPLES.items()}
    assert owner == {"u": "alice", "s": "alice", "t": "user:alice", "r": "alice", "d": None}
    assert KINDS["r"].owner("prefs/theme", {"v": 1}) is None  # an app-wide record belongs to nobody


def test_an_entry_is_the_wire_array_and_comes_back_typed():
    for entry in SAMPLES.values():
        assert msgpack.unpackb(msgpack.packb(entry, use_bin_type=True), raw=False) == list(entry)
        kind, key, *_ = entry  # still unpacks and indexes like the old list
        assert (entry[0], entry[1]) == (kind, key) == (entry.kind, entry.key)
    codec = wire.Codec(COOKIE, "n1")
    env = codec.decode(codec.encode("merge", {"entries": list(SAMPLES.values())}))
    assert env.payload["entries"] == list(SAMPLES.values())
    assert all(type(e) is Entry for e in env.payload["entries"])


def test_record_keys_split_at_the_first_slash():
    assert record_key("budget", "alice/x/1") == "budget/alice/x/1"
    assert split_record_key("budget/alice/x/1") == ("budget", "alice/x/1")


@pytest.mark.parametrize("namespace,key,value,code", [
    ("", "k", 1, "invalid"),
    ("Budget", "k", 1, "invalid"),
    ("a/b", "k", 1, "invalid"),
    ("n" * 65, "k", 1, "invalid"),
    ("ns", "", 1, "invalid"),
    ("ns", "k" * (RECORD_KEY_MAX + 1), 1, "invalid"),
    ("ns", "k", "x" * (RECORD_VALUE_MAX - 2), "too_large"),  # str8/16 header: 3 bytes, one over
    ("ns", "k", {1, 2}, "invalid"),                        # a set is not msgpack
])
def test_record_limits_are_refused_with_a_code_and_a_reason(namespace, key, value, code):
    problem = record_problem(namespace, key, value)
    assert problem is not None and problem[0] == code and problem[1]


@pytest.mark.parametrize("namespace,key,value", [
    ("n" * 64, "k" * RECORD_KEY_MAX, None), ("a.b_c-9", "ünï/cödé", [1, {"b": b"\x00"}]),
    ("ns", "k", "x" * (RECORD_VALUE_MAX - 3)),
])
def test_records_at_the_limits_are_accepted(namespace, key, value):
    assert record_problem(namespace, key, value) is None
    assert packed_size(value) <= RECORD_VALUE_MAX
    wire.check_entry(["r", record_key(namespace, key), 1, "n1", {"v": value}, 0])


# ---- records in the cache: last-writer-wins, tombstones, the namespace index ------------------

def test_records_merge_last_writer_wins_and_a_tombstone_beats_an_older_put():
    cache = Cache()
    put = Entry("r", "prefs/alice", 10, "n1", {"v": "dark"}, 0)
    newer = put._replace(hlc=11, value={"v": "light"})
    tie_lower_origin = newer._replace(origin="n0", value={"v": "loses the tie"})
    assert cache.merge([newer, put, tie_lower_origin], now=1) == [newer]
    assert cache.get("r", "prefs/alice")[2] == {"v": "light"}
    tomb = Entry("r", "prefs/alice", 12, "n2", None, 0)
    assert cache.merge([tomb, newer], now=1) == [tomb]
    assert cache.records("prefs") == [tomb], "a tombstone is kept (records never expire)"
    assert cache.purge(now=2**62) == 0
    assert cache.merge([put._replace(hlc=13)], now=1) != [], "a later put revives the key"


def test_the_namespace_index_and_the_feed_see_every_record_change():
    cache = Cache()
    entries = [Entry("r", f"{ns}/{key}", 5, "n1", {"v": key}, 0)
               for ns in ("budget", "prefs") for key in ("bob/2", "alice/1", "alice/0")]
    cache.merge(entries, now=1)
    assert [e.key for e in cache.records("budget", "alice/")] == ["budget/alice/0", "budget/alice/1"]
    assert [e.key for e in cache.records("prefs")] == ["prefs/alice/0", "prefs/alice/1", "prefs/bob/2"]
    assert cache.records("nothing") == []
    assert cache.feed_changes == entries
    assert cache.counts()["records"] == 6


def test_sorted_keys_answer_prefixes_in_order_after_every_change() -> None:
    from logonmesh.daemon.kinds import SortedKeys
    keys = SortedKeys()
    for key in ("b/2", "a/9", "a/1", "ax/1"):
        keys.add(key)
    assert keys.starting_with("a/") == ["a/1", "a/9"]
    keys.add("a/5")
    keys.discard("a/9")
    keys.discard("never/there")
    assert keys.starting_with("a/") == ["a/1", "a/5"]
    assert keys.starting_with("") == ["a/1", "a/5", "ax/1", "b/2"]
    assert keys.starting_with("c") == []


# ---- session data: the web's whole session dict under its session id ---------------------------

@pytest.mark.parametrize("sid", ["a" * 16, "Z" * 64, "aB3-_" * 4, "x" * 43])
def test_a_session_id_is_16_to_64_urlsafe_base64_characters(sid):
    assert KINDS["d"].key_ok(sid)
    wire.check_entry(["d", sid, 1, "n1", {"data": b""}, 1])


@pytest.mark.parametrize("sid", ["", "a" * 15, "a" * 65, "a" * 15 + "=", "a" * 15 + "/", "a" * 15 + " ", "ä" * 16,
                                 "budget/alice/1234"])
def test_a_session_id_outside_the_rule_is_refused_on_the_wire(sid):
    assert not KINDS["d"].key_ok(sid)
    with pytest.raises(wire.WireError):
        wire.check_entry(["d", sid, 1, "n1", {"data": b""}, 1])


def test_session_data_is_at_most_its_limit_and_only_bytes():
    assert session_data_problem(b"x" * SESSION_DATA_MAX) is None
    problem = session_data_problem(b"x" * (SESSION_DATA_MAX + 1))
    assert problem == f"session data is at most {SESSION_DATA_MAX} bytes packed (this one is {SESSION_DATA_MAX + 1})"
    wire.check_entry(["d", SID, 1, "n1", {"data": b"x" * SESSION_DATA_MAX}, 1])
    for value in ({"data": b"x" * (SESSION_DATA_MAX + 1)}, {"data": "text, not bytes"}, {"data": b"", "more": 1}, {}):
        with pytest.raises(wire.WireError):
            wire.check_entry(["d", SID, 1, "n1", value, 1])
    wire.check_entry(["d", SID, 1, "n1", None, 1])  # a tombstone has no data to measure


def test_a_destroyed_session_beats_every_live_copy_whatever_the_versions():
    live, dead = (9 << 16, "n1", {"data": b"\x80"}), (1, "n0", None)
    assert supersedes("d", dead, live) and not supersedes("d", live, dead)
    assert supersedes("d", (2, "n0", {"data": b""}), (1, "n0", {"data": b"\x80"}))  # live vs live: versions
    assert not supersedes("d", (1, "n0", None), (2, "n0", None))                      # dead vs dead: versions
    assert supersedes("r", (2, "n0", {"v": 1}), (1, "n0", None)), "records stay last-writer-wins"


def test_session_data_crosses_the_wire_as_bytes_and_comes_back_equal():
    packed = msgpack.packb({"cart": [1, 2], "blob": b"\x00\xff"}, use_bin_type=True)
    entries = [Entry("d", SID, 7 << 16, "n2", {"data": packed}, 1_900_000_000_000),
               Entry("d", SID, 8 << 16, "n1", None, 1_900_000_060_000)]
    codec = wire.Codec(COOKIE, "n1")
    for type_ in ("merge", "sessions", "push"):
        got = codec.decode(codec.encode(type_, {"entries": entries})).payload["entries"]
        assert got == entries and type(got[0].value["data"]) is bytes


def test_session_data_in_the_cache_is_a_lattice_and_counted():
    cache = Cache()
    now = 1_800_000_000_000
    live = Entry("d", SID, 9 << 16, "n1", {"data": b"new"}, now + 60_000)
    dead = Entry("d", SID, 1 << 16, "n2", None, now + 1_000)
    assert cache.merge([live], now=now) == [live] and cache.counts()["session_data"] == 1
    assert cache.merge([dead], now=now) == [dead], "an older tombstone beats a newer live copy"
    assert cache.get("d", SID) == (1 << 16, "n2", None, now + 60_000), "and takes the copy's later expiry"
    assert cache.merge([live._replace(hlc=10 << 16)], now=now) == [], "no later write brings it back"
    assert cache.counts()["session_data"] == 0 and cache.counts()["tombstones"] == 0  # session tombstones only
    assert cache.feed_changes == [live, dead], "the web's mirror hears of both"
    assert cache.purge(now=now + 60_000) == 1 and len(cache) == 0
