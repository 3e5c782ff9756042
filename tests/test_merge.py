"""Merge rules of the replicated cache (daemon/cache.py), its digest, the HLC, and repair in memory.

The cache must end in the same state, with the same digest, whatever the
order, duplication or grouping of the entries it is given: that is what lets
PUB/SUB drop and repair re-send freely.  A write's version ``(hlc, origin)``
names exactly one write, so the generated entries derive their value and
expiry from their version.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logonmesh.daemon import wire
from logonmesh.daemon.cache import Cache, created_text, user_entry
from logonmesh.daemon.digest import LEAVES, bucket_of
from logonmesh.daemon.kinds import ENDED_WINS, Entry
from logonmesh.daemon.hlc import COUNTER_BITS, HLC, physical, wall_ms
from logonmesh.daemon.membership import Peer
from logonmesh.daemon.sync import Repairs

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

NOW = 1_700_000_000_000
TTL = 60_000
KEYS = ["alice", "bob", "carol", "dave", "erin"]
ORIGINS = ["n1", "n2", "n3"]


def make_entry(kind: str, key: str, hlc: int, origin: str) -> Entry:
    """The one entry a version can name: value, tombstone and expiry are functions of it.

    Kinds: "u" users and "r" app records (never expire), "s" sessions, "d" session data and "t"
    login-failure counts (all three expire).  A record's key gets one of two namespaces, so the namespace
    index is tested too; session data's key is padded to a session id's 16 characters."""
    if kind == "u":
        # a user's origin is its id and its version its creation time (see user_entry)
        value = None if hlc % 4 == 0 else {"id": origin, "username": key, "password_hash": f"h{hlc}",
                                            "created_at": created_text(wall_ms(hlc))}
        return Entry("u", key, hlc, origin, value, 0)
    if kind == "r":
        value = None if hlc % 4 == 0 else {"v": {"label": f"item {hlc}", "cents": hlc * 100}}
        return Entry("r", f"ns{len(key) % 2}/{key}", hlc, origin, value, 0)
    if kind == "t":
        value = None if hlc % 5 == 0 else {"n": hlc}
    elif kind == "d":
        key = key.ljust(16, "x")
        value = None if hlc % 3 == 0 else {"data": f"{origin}x{hlc}".encode()}
    else:
        value = None if hlc % 3 == 0 else {"uid": f"{origin}x{hlc}", "user": key, **SESSION_META}
    # NOW-1000 .. NOW+3000, so some have already expired.  A later version never expires earlier than
    # an older one of the same key (a session-data put never shortens the version it replaces), and a
    # session's tombstone never before any live copy of its token (the daemon's revoke gives it the
    # session's own expiry and a grace): that is what lets a purge forget a key for good.
    expires = NOW + (hlc // 3 - 1) * 1000
    if kind in ENDED and value is None:
        expires = NOW + 3000 + hlc // 3 * 1000
    return Entry(kind, key, hlc, origin, value, expires)


ENDED = ("s", "d")  # the kinds whose tombstone beats every live copy (kinds.ENDED_WINS)
VERSIONS = st.tuples(st.sampled_from("ustrd"), st.sampled_from(KEYS), st.integers(1, 12), st.sampled_from(ORIGINS))
ENTRY = VERSIONS.map(lambda v: make_entry(*v))
ENTRIES = st.lists(ENTRY, max_size=40)


def cache_of(*batches: list, now: int = NOW) -> Cache:
    cache = Cache()
    for batch in batches:
        cache.merge(batch, now=now)
    return cache


def state(cache: Cache) -> tuple:
    """Everything observable: the contents and the whole digest tree."""
    d = cache.digest
    return (contents(cache), d.root, d.groups, d.leaves,
            sorted(map(tuple, cache.in_leaves(range(LEAVES)))))


def model(entries: list, now: int = NOW) -> dict:
    """What the merge must give: per key, the highest version among entries that have not expired.

    Sessions are a lattice: any tombstone beats every live copy, and the
    winning tombstone takes the latest expiry of all the copies of its token.
    """
    best: dict = {}
    latest: dict = {}
    for e in entries:
        kind, key, hlc, origin, value, expires = e
        if expires and expires <= now:
            continue
        rank = (kind in ENDED and value is None, hlc, origin)
        latest[(kind, key)] = max(latest.get((kind, key), 0), expires)
        if (kind, key) not in best or rank > best[(kind, key)][0]:
            best[(kind, key)] = (rank, (hlc, origin, value, expires))
    won = {k: v for k, (_, v) in best.items()}
    for (kind, key), (hlc, origin, value, expires) in won.items():
        if kind in ENDED and value is None:
            won[(kind, key)] = (hlc, origin, value, latest[(kind, key)])
    return won


def contents(cache: Cache) -> dict:
    return {(k, key): tuple(rest) for k, key, *rest in cache.entries()}


# ---- the merge laws ------------------------------------------------------------


@given(entries=ENTRIES)
def test_merge_keeps_the_highest_unexpired_version(entries):
    cache = cache_of(entries)
    assert contents(cache) == model(entries)
    for namespace in ("ns0", "ns1"):  # the namespace index follows the winners, tombstones included
        expected = sorted(key for (kind, key), _ in model(entries).items()
                          if kind == "r" and key.startswith(namespace + "/"))
        assert [e.key for e in cache.records(namespace)] == expected
        assert [e.key for e in cache.records(namespace, "c")] == [k for k in expected if k.startswith(namespace + "/c")]


@given(entries=ENTRIES, data=st.data())
def test_merge_is_commutative(entries, data):
    shuffled = data.draw(st.permutations(entries))
    assert state(cache_of(entries)) == state(cache_of(shuffled))


@given(entries=ENTRIES, data=st.data())
def test_merge_is_idempotent(entries, data):
    once = cache_of(entries)
    dupes = data.draw(st.lists(st.sampled_from(entries), max_size=40)) if entries else []
    twice = cache_of(entries, dupes, entries)
    assert state(once) == state(twice)
    assert twice.merge(entries, now=NOW) == []          # nothing changes the second time
    assert twice.merge(list(twice.entries()), now=NOW) == []  # nor does a cache's own state


@settings(max_examples=60)
@given(a=ENTRIES, b=ENTRIES, c=ENTRIES)
def test_merge_is_associative(a, b, c):
    def join(x: Cache, y: Cache) -> Cache:
        return cache_of(list(x.entries()), list(y.entries()))

    ca, cb, cc = cache_of(a), cache_of(b), cache_of(c)
    left, right = join(join(ca, cb), cc), join(ca, join(cb, cc))
    assert state(left) == state(right) == state(cache_of(a + b + c))


@given(entries=ENTRIES)
def test_merge_returns_exactly_what_changed(entries):
    cache = Cache()
    for entry in entries:
        before = contents(cache)
        changed = cache.merge([entry], now=NOW)
        assert (changed == [entry]) == (contents(cache) != before)


# ---- expiry and tombstones -------------------------------------------------------


def session(hlc: int, origin: str = "n1", expires: int = NOW + TTL, value: dict | None = None, key: str = "tok"):
    shown = value if value is not None else {"uid": "u1", "user": "alice", **SESSION_META}
    return ["s", key, hlc, origin, shown, expires]


def tombstone(hlc: int, origin: str = "n2", expires: int = NOW + TTL, key: str = "tok"):
    return ["s", key, hlc, origin, None, expires]


@pytest.mark.parametrize("expires", [NOW - 1, NOW])
def test_expired_entries_are_refused(expires):
    cache = Cache()
    assert cache.merge([session(5, expires=expires), tombstone(6, expires=expires)], now=NOW) == []
    assert len(cache) == 0 and cache.digest.root == Cache().digest.root


def test_expiry_zero_never_expires():
    cache = cache_of([session(5, expires=0)], now=2**62)
    assert cache.get("s", "tok") is not None
    assert cache.purge(now=2**62) == 0


def test_tombstone_beats_an_older_session_in_either_order():
    live, dead = session(5), tombstone(6)
    for order in ([live, dead], [dead, live]):
        cache = cache_of(order)
        assert cache.get("s", "tok")[2] is None
        counts = cache.counts()
        assert (counts["users"], counts["sessions"], counts["tombstones"]) == (0, 0, 1)


def test_a_tombstone_beats_a_live_session_whatever_their_versions():
    """Revocation is monotone: a session stamped later (a clock ahead) still ends, in either order."""
    for order in ([session(7), tombstone(6)], [tombstone(6), session(7)], [tombstone(1), session(2**40)]):
        cache = cache_of(order)
        assert cache.get("s", "tok")[2] is None
        assert cache.merge([session(2**50)], now=NOW) == []  # no later copy brings it back


def test_a_tombstone_takes_the_later_expiry_of_the_copies_it_defeats():
    cache = cache_of([tombstone(6, expires=NOW + 1000)])
    cache.merge([session(9, expires=NOW + 5000)], now=NOW)
    assert cache.get("s", "tok")[3] == NOW + 5000
    assert cache.purge(now=NOW + 1000) == 0 and cache.purge(now=NOW + 5000) == 1


def test_the_model_knows_which_kinds_are_a_lattice():
    assert set(ENDED) == ENDED_WINS


def test_destroyed_session_data_stays_destroyed_whatever_the_versions_and_the_order():
    sid = "s" * 43
    live = Entry("d", sid, 7, "n1", {"data": b"cart"}, NOW + 5000)
    newer, dead = live._replace(hlc=2**40, value={"data": b"later"}), Entry("d", sid, 6, "n2", None, NOW + 1000)
    for order in ([live, dead, newer], [newer, dead, live], [dead, newer, live]):
        cache = cache_of(order)
        assert cache.get("d", sid) == (6, "n2", None, NOW + 5000), "the tombstone outlives what it defeated"
    assert cache.purge(now=NOW + 4999) == 0 and cache.purge(now=NOW + 5000) == 1
    assert cache.merge([live], now=NOW + 5000) == [], "expired: a late repair cannot bring it back"


def test_records_and_failure_counts_stay_last_writer_wins():
    """Only sessions are a lattice: a record deleted, then written again, is back."""
    deleted = Entry("r", "ns/k", 5, "n1", None, 0)
    again = Entry("r", "ns/k", 6, "n1", {"v": 1}, 0)
    assert cache_of([deleted, again]).get("r", "ns/k")[2] == {"v": 1}
    assert cache_of([again, deleted]).get("r", "ns/k")[2] == {"v": 1}


def test_equal_hlc_ties_break_on_origin():
    a, b = session(5, origin="n1"), tombstone(5, origin="n2")
    assert cache_of([a, b]).get("s", "tok")[1] == "n2" == cache_of([b, a]).get("s", "tok")[1]


def test_purge_drops_expired_sessions_and_tombstones_and_repair_cannot_bring_them_back():
    exp = NOW + 1000
    old_live = session(5, expires=exp)
    cache = cache_of([old_live, tombstone(6, expires=exp), session(1, key="other", expires=exp)])
    cache.merge([session(9, key="kept", expires=exp + 5000)], now=NOW)
    assert cache.purge(now=exp - 1) == 0
    assert cache.purge(now=exp) == 2                      # the tombstone and the other session
    assert set(cache.kinds["s"]) == {"kept"}
    assert cache.digest.root == cache_of([session(9, key="kept", expires=exp + 5000)]).digest.root
    assert cache.merge([old_live], now=exp) == []         # a late repair with the old session is refused
    assert cache.get("s", "tok") is None


def test_purge_keeps_a_session_superseded_with_a_later_expiry():
    cache = cache_of([session(5, expires=NOW + 1000), session(6, expires=NOW + 9000)])
    assert cache.purge(now=NOW + 1000) == 0
    assert cache.get("s", "tok")[0] == 6
    assert cache.purge(now=NOW + 9000) == 1
    assert len(cache) == 0 and not list(cache.in_leaves(range(LEAVES))) and cache.digest.root_int == 0


@given(entries=ENTRIES, later=st.integers(0, 3000))
def test_purge_equals_never_having_had_the_expired(entries, later):
    """After a purge at t, the cache is what a fresh merge at t would give (tree included)."""
    cache = cache_of(entries)
    cache.purge(now=NOW + later)
    assert state(cache) == state(cache_of(entries, now=NOW + later))


# ---- the digest -------------------------------------------------------------------


@settings(max_examples=60)
@given(a=ENTRIES, b=ENTRIES)
def test_digest_equal_iff_same_entries(a, b):
    ca, cb = cache_of(a), cache_of(b)
    same = {k: v[:2] for k, v in contents(ca).items()} == {k: v[:2] for k, v in contents(cb).items()}
    assert (ca.digest.root == cb.digest.root) == same
    assert (ca.digest.leaves == cb.digest.leaves) == same


@given(entries=ENTRIES)
def test_digest_tree_is_consistent(entries):
    cache = cache_of(entries)
    d = cache.digest
    for g, value in enumerate(d.groups):
        acc = 0
        for leaf in d.leaves[g * 64:(g + 1) * 64]:
            acc ^= leaf
        assert acc == value
    acc = 0
    for value in d.groups:
        acc ^= value
    assert acc == d.root_int and d.root == acc.to_bytes(16, "little")
    # the leaf index knows exactly the cache's keys, each in its own bucket
    assert sorted(map(tuple, cache.in_leaves(range(LEAVES)))) == sorted(map(tuple, cache.entries()))
    assert sorted(cache.versions_in(range(LEAVES))) == sorted(tuple(e[:4]) for e in cache.entries())
    for kind, key, *_ in cache.entries():
        assert (kind, key) in [e[:2] for e in cache.in_leaves([bucket_of(kind, key)])]


def test_empty_digest():
    assert Cache().digest.root == bytes(16)


# ---- users --------------------------------------------------------------------

ROW = {"id": "3f" * 16, "username": "alice", "password_hash": "scrypt:abc",
       "created_at": "2026-03-04T05:06:07.089+00:00"}


def test_user_entry_is_a_pure_function_of_the_row():
    reordered = dict(reversed(list(ROW.items())))
    assert user_entry(ROW) == user_entry(dict(ROW)) == user_entry(reordered)
    kind, key, hlc, origin, value, expires = user_entry(ROW)
    assert (kind, key, origin, value, expires) == ("u", "alice", ROW["id"], ROW, 0)
    assert wall_ms(hlc) == 1772600767089 and hlc % (1 << COUNTER_BITS) == 0
    wire.check_entry(user_entry(ROW))


def test_user_entry_copies_the_row():
    row = dict(ROW)
    entry = user_entry(row)
    row["password_hash"] = "changed"
    assert entry[4]["password_hash"] == "scrypt:abc"


def test_same_rows_loaded_in_any_order_give_the_same_digest():
    rows = [dict(ROW, id=f"{i:032x}", username=f"user{i}", created_at=f"2026-01-01T00:00:{i:02d}+00:00")
            for i in range(30)]
    one = cache_of([user_entry(r) for r in rows])
    two = cache_of([user_entry(r) for r in reversed(rows)])
    assert state(one) == state(two)


def test_the_same_instant_in_another_timezone_gives_the_same_version():
    assert user_entry(ROW)[2] == user_entry(dict(ROW, created_at="2026-03-04T07:06:07.089+02:00"))[2]


# ---- the hybrid logical clock -------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_hlc_follows_wall_time():
    clock = FakeClock()
    hlc = HLC(clock)
    stamp = hlc.now()
    assert wall_ms(stamp) == int(clock.t * 1000) and stamp == physical(int(clock.t * 1000))
    clock.t += 5
    assert wall_ms(hlc.now()) == int(clock.t * 1000)


def test_hlc_counts_within_one_millisecond_and_survives_the_clock_going_back():
    clock = FakeClock()
    hlc = HLC(clock)
    stamps = [hlc.now() for _ in range(1000)]
    clock.t -= 60
    stamps += [hlc.now() for _ in range(10)]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert wall_ms(stamps[-1]) >= wall_ms(stamps[0])


def test_hlc_observe_moves_past_a_remote_stamp_and_never_back():
    clock = FakeClock()
    hlc = HLC(clock)
    remote = physical(int(clock.t * 1000) + 10_000) + 7
    hlc.observe(remote)
    assert hlc.now() > remote
    before = hlc.now()
    hlc.observe(5)
    assert hlc.now() > before


@given(steps=st.lists(st.tuples(st.sampled_from(["tick", "now", "observe"]), st.integers(-5000, 5000)),
                      max_size=60))
def test_hlc_is_monotonic_and_after_everything_observed(steps):
    clock = FakeClock()
    hlc = HLC(clock)
    last, seen = 0, 0
    for op, n in steps:
        if op == "tick":
            clock.t += n / 1000
        elif op == "observe":
            remote = physical(int(clock.t * 1000) + n) + abs(n) % 100
            hlc.observe(remote)
            seen = max(seen, remote)
        else:
            stamp = hlc.now()
            assert stamp > last and stamp > seen
            assert wall_ms(stamp) >= int(clock.t * 1000)
            last = stamp


# ---- repair between two caches, in memory, through the real codec -----------------

COOKIE = b"repair"


def _through_wire(message):
    """Every repair message must pass the wire's schema checks, exactly as sent."""
    if message is None:
        return None
    type_, payload = message
    env = wire.decode(wire.wire_key(COOKIE), wire.Codec(COOKIE, "n1", 1).encode(type_, payload))
    return env.type, env.payload


def repair(a: Cache, b: Cache, rounds: int = 20) -> int:
    """Run the tree walk a -> b until it reports nothing more to do; returns the exchanges used."""
    ra, rb = Repairs(a, Counter(), timeout_ms=60_000), Repairs(b, Counter(), timeout_ms=60_000)
    peer_b = Peer("b", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    for n in range(1, rounds + 1):
        req = _through_wire(ra.start(peer_b, "test"))
        rep = _through_wire(rb.answer_tree(req[1]))
        diff_req = _through_wire(ra.on_tree_rep(peer_b, rep[1]))
        if diff_req is None:
            return n
        diff_rep = _through_wire(rb.answer_diff(diff_req[1]))
        _, push, more = ra.on_diff_rep(peer_b, diff_rep[1])
        push = _through_wire(push)
        if push is not None:
            rb.on_push(push[1]["entries"])
        if not more:
            return n
    raise AssertionError("repair did not finish")


LIVE_ENTRY = VERSIONS.map(lambda v: make_entry(*v)).map(lambda e: e._replace(expires=0 if e.kind == "u" else 2**62))


@settings(max_examples=60)
@given(a=st.lists(LIVE_ENTRY, max_size=30), b=st.lists(LIVE_ENTRY, max_size=30))
def test_repair_makes_two_caches_equal_to_their_merge(a, b):
    ca, cb = cache_of(a), cache_of(b)
    repair(ca, cb)
    expected = state(cache_of(a + b))
    assert state(ca) == expected
    assert state(cb) == expected


def test_repair_of_a_large_difference_takes_several_bounded_exchanges():
    rows = [user_entry(dict(ROW, id=f"{i:032x}", username=f"u{i}")) for i in range(3000)]
    a, b = cache_of(rows), Cache()
    rounds = repair(a, b)
    assert rounds > 1
    assert state(a) == state(b)
