"""The replica core, driven by scripted histories of events: no process, no socket, a fake clock.

Each test plays what a node would hear (heartbeats, merges, registry rows,
replies) and asserts the effects it decides on, the way memberlist tests its
state machine over a mock network.  Frames are really signed and decoded with
``wire.Codec``, so every payload the core emits passes the wire schema.
"""

from __future__ import annotations

import ast
import logging
import pathlib
import random
from dataclasses import dataclass, field

import pytest
from logonmesh.daemon import wire
from logonmesh.daemon.cache import user_entry
from logonmesh.daemon.effects import (
    AdoptUsers,
    CloseDealer,
    Effect,
    Follow,
    OpenDealer,
    PollRegistry,
    Publish,
    RefreshRow,
    Rejoin,
    Reply,
    Send,
    Unfollow,
)
from logonmesh.daemon.membership import MECHANISM_MISMATCH
from logonmesh.daemon.replica import MISMATCH_HEARTBEATS, STALE_ROW_FACTOR, Replica
from logonmesh.discovery import NodeRow

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

COOKIE = b"replica-test-cookie"
KEY = wire.wire_key(COOKIE)
HEARTBEAT_MS = 100
DOWN_AFTER_MS = 1000
T0_WALL = 1_800_000_000_000


class FakeClock:
    """Both clocks of the core, moved only by the test.

    The latest one made is the test's world time: remotes read it too (plus
    their own skew), so a frame's ``sent_at`` agrees with the replica's clock
    unless a test says otherwise.
    """

    current: "FakeClock | None" = None

    def __init__(self) -> None:
        self.mono = 50_000.0
        self.wall = T0_WALL
        FakeClock.current = self

    def mono_ms(self) -> float:
        return self.mono

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, ms: int) -> None:
        self.mono += ms
        self.wall += ms


def bus(name: str) -> str:
    return f"tcp://10.0.0.{ord(name[-1]) % 200}:5000"


def router(name: str) -> str:
    return f"tcp://10.0.0.{ord(name[-1]) % 200}:6000"


class Remote:
    """A peer as the replica hears it: its own signed bus and direct streams."""

    def __init__(self, name: str, incarnation: int = 1000, skew_ms: int = 0) -> None:
        self.name = name
        self.incarnation = incarnation
        self.skew_ms = skew_ms  # how far this peer's wall clock is ahead of the test's
        self.bus_codec = wire.Codec(COOKIE, name, incarnation, clock=self.wall_ms)
        self.direct_codec = wire.Codec(COOKIE, name, incarnation, clock=self.wall_ms)

    def wall_ms(self) -> int:
        world = FakeClock.current
        return (world.wall if world is not None else T0_WALL) + self.skew_ms

    def hb(self, digest: bytes, size: int = 0) -> wire.Envelope:
        return self._env(self.bus_codec, "hb", {"size": size, "digest": digest,
                                                "bus": bus(self.name), "peer": router(self.name)})

    def merge(self, entries: list[list]) -> wire.Envelope:
        return self._env(self.bus_codec, "merge", {"entries": entries})

    def bye(self) -> wire.Envelope:
        """Its last bus message, as it leaves cleanly (SIGTERM)."""
        return self._env(self.bus_codec, "bye", {})

    def direct(self, type_: str, payload: dict) -> wire.Envelope:
        return self._env(self.direct_codec, type_, payload)

    def skip(self, n: int = 1) -> None:
        """A bus message lost on the way (PUB/SUB dropped it)."""
        self.bus_codec.seq += n

    def row(self) -> NodeRow:
        return NodeRow(self.name, bus(self.name), router(self.name), "host", 1, self.incarnation, 0.0, 0.0)

    @staticmethod
    def _env(codec: wire.Codec, type_: str, payload: dict) -> wire.Envelope:
        return wire.decode(KEY, codec.encode(type_, payload))


def replica(name: str = "n1", clock: FakeClock | None = None, seed: int = 7) -> Replica:
    r = Replica(name, 500, KEY, heartbeat_ms=HEARTBEAT_MS, down_after_ms=DOWN_AFTER_MS,
                clock=clock or FakeClock(), rng=random.Random(seed))
    r.bound(bus(name), router(name))
    return r


def sends(effects: list[Effect], type_: str | None = None) -> list[Send]:
    return [fx for fx in effects if isinstance(fx, Send) and (type_ is None or fx.type == type_)]


def session(token: str, user: str, hlc: int, origin: str, expires: int) -> list:
    return ["s", token, hlc, origin, {"uid": "u-" + user, "user": user, **SESSION_META}, expires]


def user(name: str, uid: str) -> dict:
    return {"id": uid, "username": name, "password_hash": "pbkdf2:sha256$salt$00ff",
            "created_at": "2026-01-02T03:04:05.678+00:00"}


def finish_repair(r: Replica, peer: Remote) -> None:
    """Answer the repair in flight with "no group differs", which ends it."""
    r.on_peer_reply(peer.name, peer.direct("tree_rep", {"groups": [], "leaves": b""}), 10)
    assert r.repairs.active is None


def met(r: Replica, peer: Remote) -> None:
    """History: the peer was heard once and the repair that started has finished."""
    r.on_bus(peer.hb(r.cache.digest.root))
    finish_repair(r, peer)


# ---- meeting peers ------------------------------------------------------


def test_first_heartbeat_brings_a_peer_up_dials_it_and_starts_a_repair() -> None:
    r, b = replica(), Remote("b")
    effects = r.on_bus(b.hb(b"\0" * 16))
    assert effects[:2] == [OpenDealer("b", router("b")), Follow(bus("b"))]
    ping, req = sends(effects)
    assert (ping.peer, ping.type) == ("b", "ping")  # its clock, measured at once
    assert (req.peer, req.type) == ("b", "tree_req")
    assert r.peers_up() == ["b"]
    assert r.stats["repairs_for_peer_up"] == 1


def test_a_registry_row_is_dialled_followed_and_announced_to_but_our_own_row_is_not() -> None:
    r, b = replica(), Remote("b")
    effects = r.on_rows([b.row(), Remote("n1").row()])
    assert effects == [OpenDealer("b", router("b")), Follow(bus("b")),
                       Send("b", "announce", {"bus": bus("n1"), "peer": router("n1")})]
    assert r.peer_names() == ["b"]
    assert r.peers_up() == []  # a row alone never says "up": only the bus does
    assert r.on_rows([b.row()]) == []  # nothing changed, nothing to do


def test_an_announce_is_acked_and_a_moved_peer_gets_a_new_dealer_and_loses_its_old_bus() -> None:
    r, b = replica(), Remote("b")
    r.on_rows([b.row()])
    moved = Remote("b", incarnation=2000)
    env = moved.direct("announce", {"bus": "tcp://10.0.9.9:5001", "peer": "tcp://10.0.9.9:6001"})
    effects = r.on_peer_request(env, 50)
    assert effects == [OpenDealer("b", "tcp://10.0.9.9:6001"), Unfollow(bus("b")),
                       Follow("tcp://10.0.9.9:5001"), Reply("ack", {})]


# ---- sequence numbers ------------------------------------------------------


def test_heartbeats_in_sequence_with_an_equal_digest_cause_nothing() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    for _ in range(5):
        assert r.on_bus(b.hb(r.cache.digest.root)) == []
    assert r.stats["seq_gaps"] == 0


def test_a_skipped_sequence_number_counts_a_gap_and_starts_a_repair() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    b.skip()
    (req,) = sends(r.on_bus(b.hb(r.cache.digest.root)))
    assert req.type == "tree_req"
    assert r.stats["seq_gaps"] == 1
    assert r.stats["repairs_for_seq_gap"] == 1


def test_a_repeated_sequence_number_is_refused_as_a_replay() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    frame = b.bus_codec.encode("merge", {"entries": [session("tok1", "al", 1 << 40, "b", T0_WALL + 10_000)]})
    assert r.on_bus(wire.decode(KEY, frame)) == []
    assert r.has("s", "tok1")
    r.cache.purge(T0_WALL + 20_000)  # gone here; a replayed copy must not bring it back
    assert r.on_bus(wire.decode(KEY, frame)) == []
    assert not r.has("s", "tok1")
    assert r.stats["drop_replay"] == 1
    assert r.state()["refused_by_sender"] == {"b": {"replay": 1}}


def test_an_older_incarnation_is_refused_as_a_replay() -> None:
    r, new = replica(), Remote("b", incarnation=2000)
    met(r, new)
    old = Remote("b", incarnation=1000)
    old.skip(50)  # even a far higher seq
    assert r.on_bus(old.hb(r.cache.digest.root)) == []
    assert r.stats["drop_replay"] == 1


def test_a_higher_incarnation_is_a_restart_and_starts_a_repair() -> None:
    r, b = replica(), Remote("b", incarnation=1000)
    met(r, b)
    reborn = Remote("b", incarnation=3000)
    (req,) = sends(r.on_bus(reborn.hb(r.cache.digest.root)))
    assert req.type == "tree_req"
    assert r.stats["repairs_for_peer_restart"] == 1
    assert r.peers_report()["peers"][0]["incarnation"] == 3000


# ---- digests ---------------------------------------------------------------


def test_a_digest_mismatch_waits_for_a_second_heartbeat_before_repairing() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    other = b"\x01" * 16
    assert MISMATCH_HEARTBEATS == 2
    assert r.on_bus(b.hb(other)) == []  # in flight: one beat of difference is normal
    (req,) = sends(r.on_bus(b.hb(other)))
    assert req.type == "tree_req"
    assert r.stats["repairs_for_digest_mismatch"] == 1


def test_an_agreeing_heartbeat_between_two_mismatches_resets_the_count() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    other = b"\x01" * 16
    assert r.on_bus(b.hb(other)) == []
    assert r.on_bus(b.hb(r.cache.digest.root)) == []
    assert r.on_bus(b.hb(other)) == []
    assert r.stats["repairs_for_digest_mismatch"] == 0


# ---- liveness --------------------------------------------------------------


def test_silence_past_down_after_marks_a_peer_down_and_hearing_it_again_repairs() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    clock.advance(DOWN_AFTER_MS - 1)
    assert r.liveness() == [] and r.peers_up() == ["b"]
    clock.advance(2)
    assert r.liveness() == []  # down, but still in the registry: never forgotten
    assert r.peers_up() == []
    assert r.peers_report()["peers"][0]["reason"].startswith("no heartbeat for")
    (req,) = sends(r.on_bus(b.hb(r.cache.digest.root)), "tree_req")
    assert r.stats["repairs_for_peer_up"] == 2


def test_a_withdrawn_peer_is_marked_down_its_users_adopted_and_later_forgotten() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    assert r.on_rows([]) == [AdoptUsers("b")]
    assert r.peers_up() == []
    assert r.peers_report()["peers"][0]["reason"] == "left the registry"
    clock.advance(STALE_ROW_FACTOR * DOWN_AFTER_MS + 1)
    assert r.liveness() == [Unfollow(bus("b")), CloseDealer("b")]
    assert r.peer_names() == []


def peer_view(r: Replica, name: str) -> dict:
    return next(p for p in r.peers_report()["peers"] if p["name"] == name)


def test_a_peer_that_says_bye_is_left_at_once_and_never_dialled_again() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    assert r.on_bus(b.bye()) == [Unfollow(bus("b")), CloseDealer("b")]
    view = peer_view(r, "b")
    assert (view["up"], view["state"], view["reason"]) == (False, "left", "left the cluster")
    assert r.peers_up() == [] and r.stats["peers_left"] == 1
    assert r.on_rows([b.row()]) == []  # its row, read before it was withdrawn: nothing to dial
    assert r.on_rows([]) == [AdoptUsers("b")]  # withdrawn: its users adopted, and it stays "left"
    assert peer_view(r, "b")["state"] == "left"
    clock.advance(DOWN_AFTER_MS + 1)
    assert r.liveness() == [] and peer_view(r, "b")["state"] == "left"  # not down: nothing failed
    clock.advance(STALE_ROW_FACTOR * DOWN_AFTER_MS)
    assert r.liveness() == []  # forgotten, and its sockets were let go of already
    assert r.peer_names() == []


def test_a_peer_that_left_comes_back_when_it_restarts_on_the_same_ports() -> None:
    r, b = replica(), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    r.on_bus(b.bye())
    again = Remote("b", incarnation=2000)
    env = again.direct("announce", {"bus": bus("b"), "peer": router("b")})
    assert r.on_peer_request(env, 50) == [OpenDealer("b", router("b")), Follow(bus("b")), Reply("ack", {})]
    assert peer_view(r, "b")["state"] == "down"  # known again; up with its first heartbeat
    r.on_bus(again.hb(r.cache.digest.root))
    assert peer_view(r, "b")["state"] == "up" and r.peers_up() == ["b"]


def test_a_row_of_a_new_incarnation_brings_a_left_peer_back() -> None:
    r, b = replica(), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    r.on_bus(b.bye())
    effects = r.on_rows([Remote("b", incarnation=2000).row()])
    assert effects[:2] == [OpenDealer("b", router("b")), Follow(bus("b"))]
    assert [fx.type for fx in sends(effects)] == ["announce"]


def test_a_bye_from_a_stranger_or_a_replayed_one_changes_nothing() -> None:
    r, b = replica(), Remote("b")
    assert r.on_bus(Remote("z").bye()) == [] and r.peer_names() == []
    r.on_rows([b.row()])
    met(r, b)
    bye = b.bye()
    hb = b.hb(r.cache.digest.root)  # sent after the bye: a replay, as nobody sends after goodbye
    r.on_bus(bye)
    again = Remote("b", incarnation=2000)
    r.on_peer_request(again.direct("announce", {"bus": bus("b"), "peer": router("b")}), 50)
    r.on_bus(again.hb(r.cache.digest.root))
    assert r.on_bus(bye) == [] and r.on_bus(hb) == []  # the old life's frames are refused as replays
    assert peer_view(r, "b")["state"] == "up"


def test_adopted_users_are_published_once_and_counted() -> None:
    r = replica()
    stored = [user_entry(user("al", "a" * 32)), user_entry(user("bo", "b" * 32))]  # made on the worker
    (pub,) = r.adopted("b", stored, None)
    assert isinstance(pub, Publish) and pub.type == "merge"
    assert sorted(e[1] for e in pub.payload["entries"]) == ["al", "bo"]
    assert r.lookup("u", "al")[2]["id"] == "a" * 32
    assert r.stats["users_adopted"] == 2
    assert r.adopted("b", stored, None) == []  # already known: nothing to tell anyone


def test_an_adoption_that_fails_is_logged_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    r = replica()
    with caplog.at_level(logging.WARNING):
        assert r.adopted("b", None, OSError("database is locked")) == []
    assert "could not read the users b wrote: database is locked" in caplog.text
    assert r.user_count() == 0


# ---- filters ---------------------------------------------------------------


def test_a_partitioned_peer_is_marked_down_its_frames_dropped_and_counted_until_healed() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    assert r.partition({"b", "n1"}, replace=True) == ["b"]  # never ourselves
    assert r.peers_up() == []
    assert r.on_bus(b.hb(b"\x01" * 16)) == []
    assert r.on_peer_request(b.direct("ping", {"n": 1, "t": 0.0}), 30) == []
    assert r.stats["drop_partitioned"] == 2
    assert r.request_repair(r.membership.peers["b"], "test") == []  # nothing is sent across a cut either
    r.heal()
    assert r.state()["blocked"] == []
    assert sends(r.on_bus(b.hb(r.cache.digest.root)), "tree_req")  # back up: repair


def test_the_loss_filter_drops_the_fraction_its_seeded_random_source_says() -> None:
    r, b = replica(seed=42), Remote("b")
    met(r, b)
    r.set_loss(0.5)
    same = random.Random(42)
    expected = sum(same.random() < 0.5 for _ in range(200))
    for _ in range(200):
        r.on_bus(b.hb(r.cache.digest.root))
    assert r.stats["drop_lossy"] == expected
    assert 60 < expected < 140
    r.heal()
    assert r.state()["loss"] == 0.0


def test_frames_carrying_our_own_name_are_refused_everywhere() -> None:
    r, me = replica("n1"), Remote("n1")
    assert r.on_bus(me.hb(r.cache.digest.root)) == []
    assert r.on_peer_request(me.direct("announce", {"bus": "tcp://x:1", "peer": "tcp://x:2"}), 40) == []
    assert r.stats["drop_own_name"] == 2
    assert r.peer_names() == []  # a replay must never make the node its own peer


def test_a_message_on_the_wrong_socket_is_refused() -> None:
    r, b = replica(), Remote("b")
    assert r.on_peer_request(b.hb(b"\0" * 16), 80) == []
    assert r.stats["drop_wrong_socket"] == 1


def test_the_peer_socket_answers_a_ping_once_and_refuses_its_replay() -> None:
    r, b = replica(), Remote("b")
    ping = b.direct("ping", {"n": 3, "t": 1.5})
    assert r.on_peer_request(ping, 30) == [Reply("pong", {"n": 3, "t": 1.5})]
    assert r.on_peer_request(ping, 30) == []
    assert r.stats["drop_replay"] == 1


# ---- merges and local writes ---------------------------------------------


def test_a_merge_is_applied_and_the_clock_moves_past_its_version() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=400)
    met(r, b)
    ahead = (T0_WALL + 400) << 16  # a peer whose clock runs 400 ms ahead: within the maximum offset
    r.on_bus(b.merge([["r", "ns/k", ahead, "b", {"v": 1}, 0]]))
    assert r.lookup("r", "ns/k")[2] == {"v": 1}
    entry, effects = r.write("s", "tok", None, T0_WALL + 3_600_000)  # any later write here
    assert entry[2] > ahead  # follows what it saw
    assert effects == [Publish("merge", {"entries": [entry]})]


def test_a_merge_from_a_sender_not_met_yet_is_kept_without_making_it_a_peer() -> None:
    r = replica()
    r.on_bus(Remote("c").merge([session("tok", "al", 1 << 40, "c", T0_WALL + 10_000)]))
    assert r.has("s", "tok")
    assert r.peer_names() == []


def test_a_session_stops_existing_once_the_clock_passes_its_expiry() -> None:
    clock = FakeClock()
    r = replica(clock=clock)
    r.apply_local([session("tok", "al", 1 << 40, "n1", T0_WALL + 5_000)])
    clock.advance(4_999)
    assert r.purge() == 0 and r.has("s", "tok")
    clock.advance(1)
    assert r.purge() == 1 and not r.has("s", "tok")
    # and a late copy of it is refused, so a repair cannot bring it back
    r.on_bus(Remote("b").merge([session("tok", "al", 1 << 40, "n1", T0_WALL + 5_000)]))
    assert not r.has("s", "tok")


# ---- clocks that disagree --------------------------------------------------


class SkewedClock(FakeClock):
    """A node's clocks: monotonic as the world's, wall ahead of it by ``skew_ms`` (libfaketime's job, in memory)."""

    def __init__(self, world: FakeClock, skew_ms: int) -> None:
        self.world, self.skew_ms = world, skew_ms

    def mono_ms(self) -> float:
        return self.world.mono

    def wall_ms(self) -> int:
        return self.world.wall + self.skew_ms


def pinged(r: Replica, peer: Remote, clock: FakeClock, rtt_ms: int = 2) -> None:
    """History: r pings the peer on its next heartbeat, and the pong comes back after ``rtt_ms``."""
    clock.advance(1000)
    (ping,) = sends(r.heartbeat(), "ping")
    clock.advance(rtt_ms // 2)
    pong = peer.direct("pong", ping.payload)  # signed at the peer's clock, half way
    clock.advance(rtt_ms - rtt_ms // 2)
    assert r.on_peer_reply(peer.name, pong, 20) == []


@pytest.mark.parametrize("skew_ms", [300_000, -300_000, 3])
def test_a_peer_clock_offset_is_measured_from_pings_to_within_half_the_round_trip(skew_ms: int) -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=skew_ms)
    met(r, b)
    pinged(r, b, clock, rtt_ms=2)
    (view,) = r.peers_report()["peers"]
    assert abs(view["clock_offset_ms"] - skew_ms) <= 1 and view["clock_rtt_ms"] == 2
    assert view["clock_skewed"] is (abs(skew_ms) > 500)
    assert r.peers_report()["max_clock_offset_ms"] == 500


def test_a_peer_beyond_the_maximum_offset_is_warned_about_loudly_then_every_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=300_000)
    with caplog.at_level(logging.WARNING, logger="logonmesh.daemon.replica"):
        met(r, b)
        for _ in range(10):
            clock.advance(HEARTBEAT_MS)
            r.on_bus(b.hb(r.cache.digest.root))
        warned = [m for m in caplog.messages if "beyond --max-clock-offset-ms 500" in m]
        assert len(warned) == 1 and "+300000" in warned[0] and r.stats["clock_offset_warnings"] == 1
        clock.advance(60_000)
        r.on_bus(b.hb(r.cache.digest.root))
        assert r.stats["clock_offset_warnings"] == 2
        b.skew_ms = 0  # its NTP fixed it: samples that disagree by that much mean a step, measured afresh
        clock.advance(HEARTBEAT_MS)
        r.on_bus(b.hb(r.cache.digest.root))
    assert any("back within 500 ms" in m for m in caplog.messages)
    assert abs(r.peers_report()["peers"][0]["clock_offset_ms"]) < 1


@pytest.mark.parametrize("skew_ms", [300_000, -300_000])
def test_expiries_from_a_skewed_peer_are_rebased_so_lifetimes_hold_here(skew_ms: int) -> None:
    """A session and a failure count keep their lifetime in our clock, measured or not yet measured."""
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=skew_ms)
    r.on_bus(b.merge([session("early", "al", 1 << 40, "b", b.wall_ms() + 60_000)]))  # not met yet: one-way
    met(r, b)
    pinged(r, b, clock)
    count = ["t", "user:al@b", 1 << 40, "b", {"n": 3}, b.wall_ms() + 60_000]
    r.on_bus(b.merge([session("tok", "al", 1 << 40, "b", b.wall_ms() + 60_000), count]))
    now = clock.wall
    assert r.lookup("s", "early")[3] == now - 1002 + 60_000  # made 1002 ms ago, with a 60 s lifetime
    assert r.lookup("s", "tok")[3] == now + 60_000 and r.lookup("t", "user:al@b")[3] == now + 60_000
    clock.advance(59_999)
    r.purge()
    assert r.has("s", "tok") and r.has("t", "user:al@b")
    clock.advance(1)
    r.purge()
    assert not r.has("s", "tok") and not r.has("t", "user:al@b")


def test_versions_beyond_the_maximum_offset_do_not_drag_our_clock_but_writes_to_their_key_still_win() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=300_000)
    met(r, b)
    future = b.wall_ms() << 16
    r.on_bus(b.merge([["r", "ns/k", future, "b", {"v": 1}, 0], session("tok", "al", future, "b", b.wall_ms() + 9000)]))
    assert r.stats["versions_ahead_of_clock"] == 2
    other, _ = r.write("s", "mine", {"uid": "u-al", "user": "al", **SESSION_META}, clock.wall + 9000)
    assert other.hlc >> 16 <= clock.wall + 500  # the cluster's clock stays near real time
    deleted, _ = r.write("r", "ns/k", None, 0)  # deleting what it read: above the version it replaces
    assert deleted.hlc > future and r.lookup("r", "ns/k")[2] is None


def test_a_logout_holds_against_a_session_stamped_by_a_clock_minutes_ahead_in_any_order() -> None:
    clock = FakeClock()
    r, fast, slow = replica(clock=clock), Remote("f", skew_ms=300_000), Remote("s", skew_ms=-300_000)
    met(r, fast)
    met(r, slow)
    live = session("tok", "al", fast.wall_ms() << 16, "f", fast.wall_ms() + 60_000)
    dead = ["s", "tok", slow.wall_ms() << 16, "s", None, slow.wall_ms() + 60_000]  # from a node that never saw it
    r.on_bus(slow.merge([dead]))
    r.on_bus(fast.merge([live]))
    assert r.lookup("s", "tok")[2] is None
    assert r.lookup("s", "tok")[3] >= clock.wall + 60_000  # and it outlives the copy it defeated


def test_a_peer_restarted_with_its_clock_stepped_back_is_measured_again() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b", skew_ms=0)
    met(r, b)
    pinged(r, b, clock)
    reborn = Remote("b", incarnation=b.incarnation + 1, skew_ms=-600_000)
    clock.advance(HEARTBEAT_MS)
    r.on_bus(reborn.hb(r.cache.digest.root))
    assert abs(r.peers_report()["peers"][0]["clock_offset_ms"] + 600_000) <= 1  # its one-way sample, at once
    pinged(r, reborn, clock)
    assert abs(r.peers_report()["peers"][0]["clock_offset_ms"] + 600_000) <= 1


@pytest.mark.parametrize("step_ms", [-600_000, 600_000])
def test_when_our_own_clock_steps_every_expiry_moves_with_it(step_ms: int, caplog: pytest.LogCaptureFixture) -> None:
    world = FakeClock()
    own = SkewedClock(world, 0)
    r = replica(clock=own)
    r.apply_local([session("tok", "al", 1 << 40, "n1", own.wall_ms() + 60_000)])
    own.skew_ms = step_ms  # NTP steps our clock; monotonic time goes on
    with caplog.at_level(logging.WARNING, logger="logonmesh.daemon.replica"):
        r.purge()
    assert r.stats["own_clock_steps"] == 1 and any("stepped by" in m for m in caplog.messages)
    world.advance(59_999)
    r.purge()
    assert r.has("s", "tok")  # neither cut short by a step forward
    world.advance(1)
    r.purge()
    assert not r.has("s", "tok")  # nor lengthened by a step back
    own.skew_ms += 400  # a small move (slewing): absorbed
    r.purge()
    assert r.stats["own_clock_steps"] == 1


@pytest.mark.parametrize("skew_ms", [300_000, -300_000])
def test_replicas_whose_clocks_disagree_converge_and_stop_repairing(skew_ms: int) -> None:
    """Sessions, a logout made where the session was unknown, failure counts: equal digests, then quiet."""
    world = FakeClock()
    a, b = replica("a", SkewedClock(world, skew_ms)), replica("b", world)
    net = Net({"a": a, "b": b})
    net.run("a", a.on_rows([Remote("b").row()]))
    net.run("b", b.on_rows([Remote("a").row()]))
    for _ in range(3):
        world.advance(HEARTBEAT_MS)
        net.run("a", a.heartbeat())
        net.run("b", b.heartbeat())
    net.run("a", a.write("s", "tok", {"uid": "u-al", "user": "al", **SESSION_META}, a.now() + 60_000)[1])
    net.run("a", a.write("t", "user:al@a", {"n": 1}, a.now() + 60_000)[1])
    net.run("b", b.write("s", "tok", None, b.now() + 60_000 + 60_000)[1])
    assert a.lookup("s", "tok")[2] is None and a.cache.digest.root == b.cache.digest.root
    started = a.stats["repairs_started"] + b.stats["repairs_started"]
    for _ in range(1300):  # past the count's window and the tombstone's grace: both purge at the same instant
        world.advance(HEARTBEAT_MS)
        a.purge()
        b.purge()
        net.run("a", a.heartbeat())
        net.run("b", b.heartbeat())
        assert a.cache.digest.root == b.cache.digest.root
    assert len(a.cache) == len(b.cache) == 0
    assert a.stats["repairs_started"] + b.stats["repairs_started"] == started


# ---- timers and registry jobs ----------------------------------------------


def test_a_heartbeat_carries_the_digest_and_refreshes_the_row_one_job_at_a_time() -> None:
    r = replica()
    r.apply_local([session("tok", "al", 1 << 40, "n1", T0_WALL + 5_000)])
    hb, refresh = r.heartbeat()
    assert hb == Publish("hb", {"size": 1, "digest": r.cache.digest.root, "bus": bus("n1"), "peer": router("n1")})
    assert refresh == RefreshRow()
    assert r.heartbeat()[1:] == []  # the refresh has not come back: no second job
    assert r.refreshed(True, None) == []
    assert r.heartbeat()[1:] == [RefreshRow()]


def test_a_row_the_registry_lost_is_announced_again_and_a_failed_refresh_is_counted() -> None:
    r = replica()
    assert r.refreshed(False, None) == [Rejoin()]
    assert r.refreshed(None, OSError("redis down")) == []
    assert r.stats["registry_errors"] == 1


def test_the_registry_is_polled_one_job_at_a_time_and_a_failed_poll_is_counted() -> None:
    r, b = replica(), Remote("b")
    assert r.poll() == [PollRegistry()]
    assert r.poll() == []
    assert r.polled(None, OSError("locked")) == []
    assert r.stats["registry_errors"] == 1
    assert r.poll() == [PollRegistry()]
    assert sends(r.polled([b.row()], None), "announce")


def test_a_repair_that_gets_no_answer_times_out_and_is_retried() -> None:
    clock = FakeClock()
    r, b = replica(clock=clock), Remote("b")
    r.on_bus(b.hb(b"\x01" * 16))  # starts a repair that b never answers
    b.skip()
    assert sends(r.on_bus(b.hb(r.cache.digest.root))) == []  # one repair at a time
    clock.advance(max(1000, 3 * HEARTBEAT_MS) + 1)
    b.skip()
    assert sends(r.on_bus(b.hb(r.cache.digest.root)), "tree_req")
    assert r.stats["repairs_timed_out"] == 1


def test_a_reply_to_no_repair_in_flight_is_counted_as_stray_and_changes_nothing() -> None:
    r, b = replica(), Remote("b")
    met(r, b)
    root = r.cache.digest.root
    rep = b.direct("diff_rep", {"entries": [session("tok", "al", 1 << 40, "b", T0_WALL + 10_000)], "want": b""})
    assert r.on_peer_reply("b", rep, 100) == []
    assert r.stats["repair_stray_replies"] == 1
    assert r.cache.digest.root == root


# ---- two replicas over a mock network --------------------------------------


@dataclass
class Net:
    """Delivers the effects of replicas to each other through signed frames; the shell's job, in memory."""

    nodes: dict[str, Replica]
    published: dict[str, list[list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codecs = {name: (wire.Codec(COOKIE, name, r.incarnation, clock=r.clock.wall_ms),
                              wire.Codec(COOKIE, name, r.incarnation, clock=r.clock.wall_ms))
                       for name, r in self.nodes.items()}

    def run(self, src: str, effects: list[Effect], limit: int = 100) -> None:
        queue = [(src, fx, None) for fx in effects]
        while queue:
            limit -= 1
            assert limit > 0, "the exchange does not settle"
            src, fx, asker = queue.pop(0)
            bus_codec, direct = self.codecs[src]
            if isinstance(fx, Publish):
                if fx.type == "merge":
                    self.published.setdefault(src, []).extend(fx.payload["entries"])
                env = wire.decode(KEY, bus_codec.encode(fx.type, fx.payload))
                for name, other in self.nodes.items():
                    if name != src:
                        queue += [(name, out, None) for out in other.on_bus(env)]
            elif isinstance(fx, Send):
                frame = direct.encode(fx.type, fx.payload)
                out = self.nodes[fx.peer].on_peer_request(wire.decode(KEY, frame), len(frame))
                queue += [(fx.peer, o, src) for o in out]
            elif isinstance(fx, Reply):
                frame = direct.encode(fx.type, fx.payload)
                out = self.nodes[asker].on_peer_reply(src, wire.decode(KEY, frame), len(frame))
                queue += [(asker, o, None) for o in out]


def test_a_repair_between_two_replicas_makes_them_equal_and_republishes_what_it_brought() -> None:
    clock = FakeClock()
    a, b = replica("a", clock), replica("b", clock)
    a.load([user("al", "a" * 32)], [])
    b.load([user("bo", "b" * 32)], [])
    b.apply_local([session("tok", "bo", (T0_WALL - 1) << 16, "b", T0_WALL + 60_000)])
    net = Net({"a": a, "b": b})
    net.run("a", a.on_rows([Remote("b").row()]))
    net.run("b", b.on_rows([Remote("a").row()]))
    net.run("b", b.heartbeat()[:1])  # a hears b: b is up, a repairs with it
    assert a.cache.digest.root == b.cache.digest.root
    assert a.lookup("u", "bo") is not None and b.lookup("u", "al") is not None
    assert sorted(e[1] for e in net.published["a"]) == ["bo", "tok"]  # what the repair brought, for the rest
    assert [e[1] for e in net.published["b"]] == ["al"]  # and b republishes what a pushed
    assert a.stats["repairs_done"] == 1 and b.stats["repairs_answered"] == 1
    assert a.stats["repair_bytes_in"] > 0
    started = a.stats["repairs_started"]
    for _ in range(3):  # equal now: further heartbeats start nothing
        net.run("b", b.heartbeat()[:1])
    assert a.stats["repairs_started"] == started


def test_a_lost_merge_is_healed_by_the_repair_the_gap_starts() -> None:
    clock = FakeClock()
    a, b = replica("a", clock), replica("b", clock)
    net = Net({"a": a, "b": b})
    net.run("b", b.on_rows([Remote("a").row()]))
    net.run("a", a.heartbeat()[:1])  # b meets a and repairs (nothing to do)
    _, lost = a.write("s", "tok", {"uid": "u-al", "user": "al", **SESSION_META}, T0_WALL + 60_000)
    net.codecs["a"][0].encode(lost[0].type, lost[0].payload)  # PUB/SUB drops it on the way to b
    assert not b.has("s", "tok")
    net.run("a", a.heartbeat()[:1])  # the next heartbeat shows b a gap
    assert b.stats["seq_gaps"] == 1
    assert b.lookup("s", "tok")[2] == {"uid": "u-al", "user": "al", **SESSION_META}
    assert a.cache.digest.root == b.cache.digest.root


# ---- the core stays without I/O ---------------------------------------------

CORE = ("replica", "effects", "membership", "sync", "cache", "digest", "hlc", "guard", "clock", "trace")
FORBIDDEN = {"zmq", "sqlite3", "sqlite_utils", "redis", "socket", "fcntl", "signal", "threading"}


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_io_library(module: str) -> None:
    path = pathlib.Path(__file__).parent.parent / "daemon" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_a_failed_handshake_is_the_reason_a_down_peer_shows_and_is_logged_once(caplog) -> None:
    """libzmq retries the connect every ~100 ms; one line per cause is news, the rest only counts."""
    r, b = replica(), Remote("b")
    r.on_rows([b.row()])
    caplog.set_level(logging.WARNING, logger="logonmesh.daemon.replica")
    for _ in range(3):
        r.handshake_failed("b", "HANDSHAKE_FAILED_PROTOCOL", MECHANISM_MISMATCH, router("b"))
    assert r.stats["handshake_failures"] == 3
    reason = "handshake failed: one side has --curve, the other not"
    assert peer_view(r, "b")["reason"] == reason
    assert [rec.getMessage() for rec in caplog.records] == [f"peer b at {router('b')}: {reason}"]
    r.handshake_failed("b", "HANDSHAKE_FAILED_NO_DETAIL", 32, router("b"))  # both CURVE, other cookies
    assert peer_view(r, "b")["reason"] == "handshake failed: they disagree on --curve, or the cookies differ"
    assert len(caplog.records) == 2


def test_a_failed_handshake_leaves_an_up_peer_up_and_an_unknown_one_is_only_counted() -> None:
    r, b = replica(), Remote("b")
    r.on_rows([b.row()])
    met(r, b)
    r.handshake_failed("b", "HANDSHAKE_FAILED_AUTH", 0, router("b"))
    r.handshake_failed("nobody", "HANDSHAKE_FAILED_AUTH", 0, router("nobody"))
    assert peer_view(r, "b")["state"] == "up" and peer_view(r, "b")["reason"] == "heartbeat"
    assert r.stats["handshake_failures"] == 2 and r.peer_names() == ["b"]
