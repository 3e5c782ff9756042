"""Server-side session data (kind ``d``): the daemon's three ipc ops on real daemons, and the web's mirror of it.

The daemon keeps a web session's packed dict opaque under its sid, replicates
it, and never lets a destroyed session come back.  Real ``python -m logonmesh
daemon`` processes (tests/conftest.py's ``two_daemons``) for everything that
crosses processes; the mirror's hold and lookup rules in process; and one
``SessionMirror`` following a real daemon's feed.  Every wait is
``eventually`` with a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import msgpack
import pytest

from logonmesh.commands import tap
from logonmesh.daemon import wire
from logonmesh.daemon.client import DaemonClient, DaemonError
from logonmesh.daemon.config import Settings, feed_path, ipc_path
from logonmesh.daemon.kinds import SESSION_DATA_MAX, TOMBSTONE_GRACE_MS, Entry
from logonmesh.testing import LocalCluster, Node, eventually
from logonmesh.flask.mirror import UNKNOWN, SessionMirror, held_after

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

DEADLINE = 2.0
TEN_YEARS_S = 10 * 365 * 86400


def new_sid() -> str:
    return secrets.token_urlsafe(32)  # what the web makes: 43 characters


def packed(**session: Any) -> bytes:
    return msgpack.packb(session, use_bin_type=True)


def data_on(node: Node, sid: str) -> bytes:
    found = node.call("session_data_get", sid=sid)
    assert found is not None, f"{node.name} has no data for the session yet"
    return found["data"]


def has(node: Node, sid: str, data: bytes) -> None:
    assert data_on(node, sid) == data, f"{node.name} has another version"


def destroyed_on(node: Node, sid: str) -> None:
    assert node.call("session_data_get", sid=sid) is None, f"{node.name} still has data for the session"


def converged(cluster: LocalCluster) -> None:
    assert cluster.converged(), "the digests differ"


def live_count(node: Node) -> int:
    return node.status()["cache"]["session_data"]


@pytest.fixture(scope="module")
def pair(two_daemons: LocalCluster) -> LocalCluster:
    return two_daemons


# ---- the ops on real daemons ---------------------------------------------------------------


def test_data_put_on_one_node_is_read_on_the_other(pair):
    n1, n2 = pair.nodes
    sid, data = new_sid(), packed(cart=[1, 2], theme="dark", blob=b"\x00\xff")
    before = live_count(n2)
    put = n1.call("session_data_put", sid=sid, data=data, ttl_s=600)
    assert set(put) == {"sid", "hlc", "origin", "expires", "destroyed"}
    assert (put["sid"], put["origin"], put["destroyed"]) == (sid, "n1", False)
    assert abs(put["expires"] - (time.time() * 1000 + 600_000)) < 5_000
    assert eventually(lambda: data_on(n2, sid), timeout=DEADLINE) == data
    got = n2.call("session_data_get", sid=sid)
    assert got == {"data": data, "expires": got["expires"], "hlc": put["hlc"], "origin": "n1"}
    assert abs(got["expires"] - put["expires"]) < 1000, "the same instant, rebased by n2's estimate of n1's clock"
    assert msgpack.unpackb(got["data"]) == {"cart": [1, 2], "theme": "dark", "blob": b"\x00\xff"}

    again = n2.call("session_data_put", sid=sid, data=packed(cart=[]), ttl_s=600)  # whole-session, last writer
    assert again["hlc"] > put["hlc"] and again["origin"] == "n2"
    eventually(lambda: has(n1, sid, packed(cart=[])), timeout=DEADLINE)
    assert live_count(n2) == before + 1


def test_a_put_never_shortens_the_lifetime_of_the_version_it_replaces(pair):
    n1, _ = pair.nodes
    sid = new_sid()
    long = n1.call("session_data_put", sid=sid, data=b"a", ttl_s=3600)
    short = n1.call("session_data_put", sid=sid, data=b"b", ttl_s=60)
    assert short["expires"] == long["expires"] and short["hlc"] > long["hlc"]
    assert n1.call("session_data_get", sid=sid)["data"] == b"b"


def test_unknown_session_data_is_none(pair):
    n1, _ = pair.nodes
    assert n1.call("session_data_get", sid=new_sid()) is None
    assert n1.call("session_data_get", sid="short") is None


def test_delete_destroys_the_data_everywhere_and_no_later_put_brings_it_back(pair):
    n1, n2 = pair.nodes
    sid = new_sid()
    put = n1.call("session_data_put", sid=sid, data=packed(user="alice"), ttl_s=600)
    eventually(lambda: data_on(n2, sid), timeout=DEADLINE)
    ends = n2.call("session_data_get", sid=sid)["expires"]  # in n2's clock
    deleted = n2.call("session_data_delete", sid=sid)
    assert deleted == {"expires": ends + TOMBSTONE_GRACE_MS}, "the tombstone outlives the data"
    destroyed_on(n2, sid)
    eventually(lambda: destroyed_on(n1, sid), timeout=DEADLINE)

    refused = n1.status()["stats"].get("session_data_put_destroyed", 0)
    late = n1.call("session_data_put", sid=sid, data=packed(user="mallory"), ttl_s=600)
    assert late["destroyed"] is True and late["hlc"] > put["hlc"] and late["origin"] == "n2"
    assert abs(late["expires"] - deleted["expires"]) < 1000  # n1's clock, as n1 rebased it
    assert n1.status()["stats"]["session_data_put_destroyed"] == refused + 1
    destroyed_on(n1, sid)
    eventually(lambda: converged(pair), timeout=DEADLINE)
    destroyed_on(n2, sid)


def test_deleting_a_sid_never_seen_here_gives_a_full_session_lifetime(pair):
    n1, _ = pair.nodes
    ttl_ms = Settings().session_ttl_s * 1000  # the harness runs the default --session-ttl
    deleted = n1.call("session_data_delete", sid=new_sid())
    assert abs(deleted["expires"] - (time.time() * 1000 + ttl_ms + TOMBSTONE_GRACE_MS)) < 5_000


@pytest.mark.parametrize("args,code,message", [
    ({"data": b"x" * (SESSION_DATA_MAX + 1), "ttl_s": 60}, "too_large",
     f"session data is at most 4096 bytes packed (this one is {SESSION_DATA_MAX + 1})"),
    ({"data": b"x", "ttl_s": 0}, "invalid", "ttl_s is 1 to 315360000 seconds"),
    ({"data": b"x", "ttl_s": -5}, "invalid", "ttl_s is 1 to 315360000 seconds"),
    ({"data": b"x", "ttl_s": TEN_YEARS_S + 1}, "invalid", "ttl_s is 1 to 315360000 seconds"),
    ({"data": "text", "ttl_s": 60}, "bad_args", "session_data_put.data must be bytes"),
    ({"data": b"x", "ttl_s": True}, "bad_args", "session_data_put.ttl_s must be int"),
])
def test_bad_puts_are_refused_with_a_code_and_write_nothing(pair, args, code, message):
    n1, _ = pair.nodes
    sid, digest = new_sid(), n1.status()["digest"]
    with pytest.raises(DaemonError) as info:
        n1.call("session_data_put", sid=sid, **args)
    assert info.value.code == code and message in str(info.value)
    assert n1.call("session_data_get", sid=sid) is None and n1.status()["digest"] == digest


@pytest.mark.parametrize("sid", ["", "s" * 15, "s" * 65, "s" * 42 + "=", "s" * 42 + "/", "budget/alice/12345"])
def test_a_sid_the_wire_cannot_carry_is_refused(pair, sid):
    n1, _ = pair.nodes
    for op, args in (("session_data_put", {"data": b"x", "ttl_s": 60}), ("session_data_delete", {})):
        with pytest.raises(DaemonError) as info:
            n1.call(op, sid=sid, **args)
        assert info.value.code == "invalid" and "a session id is 16 to 64 characters" in str(info.value)


def test_the_largest_data_and_the_longest_sid_travel(pair):
    n1, n2 = pair.nodes
    sid, data = "L" * 64, os.urandom(SESSION_DATA_MAX)
    n1.call("session_data_put", sid=sid, data=data, ttl_s=60)
    assert eventually(lambda: data_on(n2, sid), timeout=DEADLINE) == data
    assert n2.status()["stats"].get("drop_schema", 0) == 0


def test_session_data_expires_after_its_ttl_on_every_node(pair):
    n1, n2 = pair.nodes
    sid = new_sid()
    n1.call("session_data_put", sid=sid, data=b"brief", ttl_s=1)
    assert data_on(n1, sid) == b"brief"
    eventually(lambda: data_on(n2, sid), timeout=DEADLINE)
    started = time.monotonic()
    for node in (n1, n2):
        eventually(lambda: destroyed_on(node, sid), timeout=3.0)
    assert time.monotonic() - started < 3.0

    def purged() -> None:  # gone from the caches, not only refused by the op
        assert all(not any(row["kind"] == "d" and row["key"] == sid[:8] + "…" for row in cache_rows(node))
                   for node in (n1, n2))
    eventually(purged, timeout=3.0)


def cache_rows(node: Node) -> list[dict]:
    return node.call("cache", user=None, sessions=False, limit=100_000)["entries"]


def test_the_cache_op_and_the_cli_never_show_the_data_or_the_whole_sid(pair):
    n1, _ = pair.nodes
    sid, secret = new_sid(), b"do-not-print-me"
    n1.call("session_data_put", sid=sid, data=packed(note=secret), ttl_s=600)
    rows = [row for row in cache_rows(n1) if row["kind"] == "d" and row["key"] == sid[:8] + "…"]
    assert len(rows) == 1
    assert set(rows[0]) == {"kind", "name", "key", "hlc", "origin", "expires", "tombstone"}
    assert rows[0]["name"] == "session data" and rows[0]["tombstone"] is False
    assert all(row["kind"] != "d" for row in n1.call("cache", user=None, sessions=True, limit=100_000)["entries"])
    cli = [sys.executable, "-m", "logonmesh", "cache", "--node", "n1"]
    for argv in (cli, cli + ["--json"]):
        proc = subprocess.run(argv, env=pair.env, cwd=pair.dir, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert sid not in proc.stdout and "do-not-print-me" not in proc.stdout and sid[:8] in proc.stdout
    assert "SESSION DATA" in proc_text(pair, cli)
    assert any(e["key"] == sid[:8] + "…" for e in json.loads(proc_text(pair, cli + ["--json"]))["entries"])


def proc_text(cluster: LocalCluster, argv: list[str]) -> str:
    return subprocess.run(argv, env=cluster.env, cwd=cluster.dir, capture_output=True, text=True,
                          timeout=30).stdout


def test_tap_describes_session_data_by_its_size_only():
    sid, data = "S" * 43, packed(note=b"do-not-print-me")
    entries = [Entry("d", sid, 1, "n1", {"data": data}, 5), Entry("d", sid, 2, "n2", None, 5)]
    line = tap.summary("merge", {"entries": entries})
    assert line == f"2 entries: session data SSSSSSSS… ({len(data)} bytes), session data SSSSSSSS… (destroyed)"
    shown = repr(tap.redacted("merge", {"entries": entries}))
    assert sid not in shown and "do-not-print-me" not in shown


# ---- a partition: a destroyed session stays destroyed whatever arrives later ----------------------


def test_across_a_partition_a_destroyed_session_beats_an_older_and_a_newer_put():
    """The older put loses by its version alone; the newer one only because a tombstone beats every live copy.

    Two writes in one millisecond on two nodes may stamp in either order, so
    each side writes again until the versions are in the order the case needs.
    """
    with LocalCluster() as cluster:
        a, b = cluster.start_nodes("p", 2, web=False)
        older, newer = new_sid(), new_sid()
        cluster.partition([a], [b])
        put = a.call("session_data_put", sid=older, data=b"written before the delete", ttl_s=600)
        while b.call("session_data_delete", sid=older) and version(b, older) <= put["hlc"]:
            pass                                           # b never saw the put: its tombstone is newer
        b.call("session_data_delete", sid=newer)
        while (put := a.call("session_data_put", sid=newer, data=b"after the delete", ttl_s=600))["hlc"] \
                <= version(b, newer):
            pass                                           # a never saw the delete: its put is newer
        assert put["destroyed"] is False and data_on(a, newer) == b"after the delete"
        cluster.heal()
        for sid in (older, newer):
            for node in (a, b):
                eventually(lambda: destroyed_on(node, sid), timeout=10)
        eventually(lambda: converged(cluster), timeout=10)
        assert a.call("session_data_put", sid=newer, data=b"again", ttl_s=600)["destroyed"] is True
        assert live_count(a) == live_count(b) == 0


def version(node: Node, sid: str) -> int:
    """The hlc of the node's entry for the sid (from the redacted rows: only 8 characters of it are shown)."""
    (row,) = [row for row in cache_rows(node) if row["kind"] == "d" and row["key"] == sid[:8] + "…"]
    return row["hlc"]


# ---- the mirror: hold and lookup rules, in process --------------------------------------------


class StandingMirror(SessionMirror):
    """A mirror whose thread never starts: the tests play the feed (``_apply``) and the requests."""

    def _ensure_running(self) -> None:
        pass


class FakeDaemon:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        assert op == "sessions_snapshot"
        return {"entries": self.entries, "incarnation": 1, "seq": 1}


@pytest.fixture
def mirror(tmp_path) -> Iterator[StandingMirror]:
    ipc = tmp_path / "daemon.ipc"
    ipc.touch()  # the daemon's socket exists: it is running
    m = StandingMirror(str(tmp_path / "feed"), str(ipc), b"cookie", FakeDaemon([]), stale_after_s=60)
    assert m._snapshot() and m.current()
    yield m
    m.close()


def later() -> int:
    return int(time.time() * 1000) + 60_000


def feed(m: SessionMirror, sid: str, hlc: int, data: bytes | None, expires: int, origin: str = "n2") -> None:
    m._apply([Entry("d", sid, hlc, origin, None if data is None else {"data": data}, expires)])


def test_held_after_is_the_cache_merge():
    live, newer = (5, "n1", b"a", 100), (9, "n1", b"b", 50)
    dead = (1, "n0", None, 70)
    assert held_after(None, live) == live
    assert held_after(live, newer) == newer and held_after(newer, live) == newer
    assert held_after(newer, dead) == (1, "n0", None, 70), "a tombstone beats a newer live copy"
    assert held_after(live, dead) == (1, "n0", None, 100), "and keeps the later expiry of what it beat"
    assert held_after(dead, newer) == dead and held_after(dead, live) == (1, "n0", None, 100)
    assert held_after(dead, (2, "n0", None, 10)) == (2, "n0", None, 70), "between tombstones: versions"


def test_the_mirror_answers_unknown_until_it_has_seen_the_sid(mirror):
    sid = new_sid()
    assert mirror.session_data(sid) is UNKNOWN
    feed(mirror, sid, 5, b"data", later())
    assert mirror.session_data(sid) == b"data"
    mirror._trusted = False
    assert mirror.session_data(sid) is UNKNOWN, "an untrusted mirror never vouches"


def test_a_write_here_is_read_at_once_and_an_older_feed_copy_cannot_undo_it(mirror):
    sid = new_sid()
    feed(mirror, sid, 5, b"first", later())
    mirror.session_data_written(sid, {"sid": sid, "hlc": 9, "origin": "n1", "expires": later(),
                                      "destroyed": False}, b"mine")
    assert mirror.session_data(sid) == b"mine"
    feed(mirror, sid, 7, b"older, arriving late", later())
    assert mirror.session_data(sid) == b"mine"
    feed(mirror, sid, 9, b"mine", later(), origin="n1")   # the feed's own copy of the write
    feed(mirror, sid, 11, b"newer from n2", later())
    assert mirror.session_data(sid) == b"newer from n2"


def test_a_destroyed_session_reads_none_and_no_copy_brings_it_back(mirror):
    sid, other = new_sid(), new_sid()
    mirror.session_data_written(sid, {"sid": sid, "hlc": 9, "origin": "n1", "expires": later(),
                                      "destroyed": False}, b"mine")
    mirror.session_data_destroyed(sid, later() + TOMBSTONE_GRACE_MS)
    assert mirror.session_data(sid) is None
    feed(mirror, sid, 2**50, b"newer live copy", later())
    mirror.session_data_written(sid, {"sid": sid, "hlc": 2**51, "origin": "n1", "expires": later(),
                                      "destroyed": False}, b"a write racing the logout")
    assert mirror.session_data(sid) is None
    feed(mirror, sid, 12, None, later())                  # the feed's own tombstone replaces ours
    assert mirror._session_data[sid][:3] == (12, "n2", None)
    mirror.session_data_written(other, {"sid": other, "hlc": 3, "origin": "n2", "expires": later(),
                                        "destroyed": True}, b"refused by the daemon")
    assert mirror.session_data(other) is None, "a put the daemon refused holds the tombstone"


def test_expired_data_reads_none_and_the_purge_forgets_it(mirror):
    live, gone, dead = new_sid(), new_sid(), new_sid()
    past = int(time.time() * 1000) - 1
    feed(mirror, live, 5, b"live", later())
    feed(mirror, gone, 5, b"expired", past)
    feed(mirror, dead, 5, None, past)
    assert mirror.session_data(gone) is None
    mirror._purge()
    assert set(mirror._session_data) == {live}
    assert mirror.session_data(gone) is UNKNOWN and mirror.session_data(live) == b"live"


def test_a_snapshot_replaces_what_the_mirror_held(mirror):
    kept, dropped, dead = new_sid(), new_sid(), new_sid()
    feed(mirror, dropped, 5, b"the daemon restarted without it", later())
    mirror.client = FakeDaemon([Entry("d", kept, 5, "n1", {"data": b"kept"}, later()),
                                Entry("d", dead, 4, "n1", {"data": b"x"}, later()),
                                Entry("d", dead, 3, "n2", None, later()),
                                Entry("s", "t" * 43, 1, "n1", {"uid": "u", "user": "al", **SESSION_META}, later())])
    assert mirror._snapshot()
    assert mirror.session_data(kept) == b"kept" and mirror.session_data(dead) is None
    assert mirror.session_data(dropped) is UNKNOWN


def test_request_threads_racing_the_feed_never_revive_a_destroyed_session(mirror):
    """Writes held by request threads while the mirror thread applies tombstones: every tombstone wins."""
    sids = [new_sid() for _ in range(3000)]
    go = threading.Barrier(3)

    def writes() -> None:
        go.wait()
        for n, sid in enumerate(sids):
            mirror.session_data_written(sid, {"sid": sid, "hlc": 10 + n, "origin": "n1", "expires": later(),
                                              "destroyed": False}, b"late write")

    def tombstones() -> None:
        go.wait()
        for sid in sids:
            feed(mirror, sid, 1, None, later())

    threads = [threading.Thread(target=writes), threading.Thread(target=tombstones)]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    assert [sid for sid in sids if mirror.session_data(sid) is not None] == []


# ---- the mirror following a real daemon's feed ---------------------------------------------------


def test_a_mirror_following_a_real_daemon_sees_data_written_on_another_node(pair):
    n1, n2 = pair.nodes
    cookie = pair.cookie.encode()
    client = DaemonClient(ipc_path(pair.run_dir, "n1"), cookie, name="mirror-test")
    mirror = SessionMirror(feed_path(pair.run_dir, "n1"), ipc_path(pair.run_dir, "n1"), cookie, client,
                           stale_after_s=2.0)
    mirror.start()
    try:
        eventually(mirror.current, timeout=5)
        before, sid = new_sid(), new_sid()
        n2.call("session_data_put", sid=before, data=b"before", ttl_s=600)
        eventually(lambda: data_on(n1, before), timeout=DEADLINE)
        assert mirror.session_data(sid) is UNKNOWN

        n2.call("session_data_put", sid=sid, data=packed(seen="on n2"), ttl_s=600)
        assert eventually(lambda: _mirrored(mirror, sid), timeout=DEADLINE) == packed(seen="on n2")
        assert _mirrored(mirror, before) == b"before"

        written = n1.call("session_data_put", sid=sid, data=b"on n1", ttl_s=600)   # this web's own write
        mirror.session_data_written(sid, written, b"on n1")
        assert mirror.session_data(sid) == b"on n1"

        n2.call("session_data_delete", sid=sid)
        eventually(lambda: mirror.session_data(sid) is None, timeout=DEADLINE)
        kinds = {wire.check_entry(e).kind for e in n1.call("sessions_snapshot")["entries"]}
        assert "d" in kinds, "the snapshot carries the kind too"
    finally:
        mirror.close()
        client.close()


def _mirrored(mirror: SessionMirror, sid: str) -> bytes:
    found = mirror.session_data(sid)
    assert isinstance(found, bytes), f"the mirror answers {found!r}"
    return found
