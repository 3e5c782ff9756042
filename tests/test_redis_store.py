"""The Redis registry and user store, against the real Redis at 127.0.0.1:6379.

Each test works under a key prefix of its own (``?prefix=`` in the URL) and
deletes its keys afterwards, so tests never see each other's rows and the
shared server is left as it was found.  When no Redis answers there the
module is skipped with that reason (the CI machine runs one).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import redis

from logonmesh.daemon import config
from logonmesh.daemon.kinds import Entry, record_entry, stored_record
from logonmesh.discovery import StoreUnavailable, UsernameTaken, open_store
from logonmesh.testing import Browser, LocalCluster, eventually, free_port
from logonmesh.discovery import NodeRow, open_registry
from logonmesh.discovery.redis import RedisRegistry, parse_url

REDIS = "redis://127.0.0.1:6379/0"
PASSWORD = "correct horse battery"


def _reachable() -> str | None:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1, socket_timeout=1).ping()
        return None
    except redis.RedisError as exc:
        return f"no Redis at {REDIS}: {exc}"


_why_not = _reachable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture
def url() -> Iterator[str]:
    """A URL with a fresh prefix; every key under it is deleted afterwards."""
    prefix = f"lmtest-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(parse_url(url)[0], decode_responses=True)


def row(name: str, incarnation: int = 1, host: str = "198.51.100.10") -> NodeRow:
    now = time.time()
    return NodeRow(name, f"tcp://{host}:5001", f"tcp://{host}:5002", "h", 123, incarnation, now, now)


def user(username: str, n: int = 0) -> dict:
    return {"id": uuid.uuid4().hex, "username": username, "password_hash": f"hash-{n}",
            "created_at": "2026-01-02T03:04:05.678+00:00"}


# ---- settings -------------------------------------------------------------------

def test_db_setting_accepts_paths_sqlite_and_redis_urls(tmp_path) -> None:
    assert config.load({"db": str(tmp_path / "c.db")}).db == str(tmp_path / "c.db")
    assert config.load({"db": f"sqlite://{tmp_path}/c.db"}).db == f"{tmp_path}/c.db"
    assert config.load({"db": "redis://10.0.0.1:6379/2?prefix=blue"}).db == "redis://10.0.0.1:6379/2?prefix=blue"
    for bad, why in [("redis://h:6379/x", "must be a number"), ("redis:///0", "names no host"),
                     ("redis://h:6379/0?prefix=a*b", "prefix must match"), ("mysql://h/db", "must be a path")]:
        with pytest.raises(config.ConfigError, match=why):
            config.load({"db": bad})


def test_a_url_needs_an_explicit_cookie() -> None:
    settings = config.load({"db": REDIS}, environ={})
    with pytest.raises(config.ConfigError, match="must be set when --db is a URL"):
        config.resolve_cookie(settings)


def test_advertised_host_and_fixed_ports() -> None:
    s = config.load({"bind": "0.0.0.0", "advertise": "198.51.100.7", "bus_port": "7001", "peer_port": "0"},
                    environ={})
    assert (s.advertised_host, s.bus_port, s.peer_port) == ("198.51.100.7", 7001, 0)
    assert config.load({"bind": "0.0.0.0"}, environ={}).advertised_host == "127.0.0.1"
    assert config.load({"bind": "10.1.2.3"}, environ={}).advertised_host == "10.1.2.3"
    with pytest.raises(config.ConfigError, match="--bus-port"):
        config.load({"bus_port": "70000"}, environ={})


def test_daemon_binds_wildcard_and_announces_the_advertised_address(url: str) -> None:
    """--bind 0.0.0.0 with --advertise: the row and the status carry the advertised host and the fixed ports."""
    bus_port, peer_port = free_port(), free_port()
    env = {"LOGONMESH_DB": url, "LOGONMESH_BIND": "0.0.0.0", "LOGONMESH_ADVERTISE": "127.0.0.1",
           "LOGONMESH_BUS_PORT": str(bus_port), "LOGONMESH_PEER_PORT": str(peer_port)}
    with LocalCluster(heartbeat_ms=100, env=env) as cluster:
        [node] = cluster.start_nodes("wild", 1, web=False)
        status = node.status()
        assert (status["bus"], status["peer"]) == (f"tcp://127.0.0.1:{bus_port}", f"tcp://127.0.0.1:{peer_port}")
        row = raw(url).hgetall(f"{parse_url(url)[1]}:node:wild1")
        assert (row["bus_endpoint"], row["peer_endpoint"]) == (status["bus"], status["peer"])


# ---- registry -------------------------------------------------------------------

def test_announce_refresh_peers_withdraw(url: str) -> None:
    reg = open_registry(url, row_ttl_ms=60_000)
    try:
        reg.announce(row("a", 1))
        reg.announce(row("b", 2))
        assert sorted(r.id for r in reg.peers()) == ["a", "b"]
        [a] = [r for r in reg.peers() if r.id == "a"]
        assert (a.bus_endpoint, a.pid, a.incarnation) == ("tcp://198.51.100.10:5001", 123, 1)
        assert reg.refresh("a", 1, 1234.5) is True
        assert next(r for r in reg.peers() if r.id == "a").heartbeat_at == 1234.5
        assert reg.refresh("a", 99, 1.0) is False, "another incarnation's row is not ours to touch"
        assert reg.refresh("zz", 1, 1.0) is False, "a missing row must be announced again"
        reg.withdraw("a", 99)
        assert "a" in {r.id for r in reg.peers()}, "withdraw of another incarnation removes nothing"
        reg.withdraw("a", 1)
        assert [r.id for r in reg.peers()] == ["b"]
        assert reg.prune(0.0) == [], "prune is the TTL's job"
    finally:
        reg.close()


def test_rows_expire_unless_refreshed(url: str) -> None:
    reg = open_registry(url, row_ttl_ms=400)
    try:
        reg.announce(row("dies", 1))
        reg.announce(row("lives", 1))
        assert raw(url).pttl(f"{parse_url(url)[1]}:node:dies") > 0

        def only_the_refreshed_one_left() -> None:
            assert reg.refresh("lives", 1, time.time())
            assert [r.id for r in reg.peers()] == ["lives"]
        eventually(only_the_refreshed_one_left, timeout=5, interval=0.1)
        assert reg.refresh("dies", 1, time.time()) is False
    finally:
        reg.close()


def test_listing_walks_every_scan_page(url: str) -> None:
    prefix = parse_url(url)[1]
    client = raw(url)
    pipe = client.pipeline(transaction=False)
    for i in range(2500):
        r = row(f"n{i}", i + 1)
        pipe.hset(f"{prefix}:node:{r.id}", mapping={k: str(v) for k, v in r.__dict__.items()})
    pipe.execute()
    reg = RedisRegistry(url, scan_count=100)
    try:
        rows = reg.peers()
        assert len(rows) == 2500 and len({r.id for r in rows}) == 2500
    finally:
        reg.close()


def test_bad_rows_are_ignored_and_counted(url: str) -> None:
    prefix = parse_url(url)[1]
    client = raw(url)
    good = row("good", 1)
    fields = {k: str(v) for k, v in good.__dict__.items()}
    client.hset(f"{prefix}:node:good", mapping=fields)
    client.hset(f"{prefix}:node:Bad Name!", mapping=dict(fields, id="Bad Name!"))
    client.hset(f"{prefix}:node:{'x' * 40}", mapping=dict(fields, id="x" * 40))
    client.hset(f"{prefix}:node:liar", mapping=fields)  # id field says "good"
    client.hset(f"{prefix}:node:noport", mapping=dict(fields, id="noport", bus_endpoint="ipc:///etc/passwd"))
    client.hset(f"{prefix}:node:nopid", mapping=dict(fields, id="nopid", pid="many"))
    reg = RedisRegistry(url)
    try:
        assert [r.id for r in reg.peers()] == ["good"]
        assert reg.bad_rows == 5
    finally:
        reg.close()


# ---- users ----------------------------------------------------------------------

def test_written_by_lists_the_users_a_node_wrote(url: str) -> None:
    """What the others adopt when a node vanishes (see Daemon._adopt)."""
    store = open_store(url)
    try:
        for name, node in (("a1", "x"), ("a2", "x"), ("b1", "y")):
            store.insert(user(name), node)
        assert sorted(u["username"] for u in store.written_by("x")) == ["a1", "a2"]
        assert [u["username"] for u in store.written_by("nobody")] == []
    finally:
        store.close()


def test_registration_is_unique_under_concurrency(url: str) -> None:
    """Sixteen threads, each with its own connection, race for one username: one wins."""
    barrier = threading.Barrier(16)

    def attempt(n: int) -> bool:
        store = open_store(url)
        try:
            barrier.wait()
            store.insert(user("contested", n), f"n{n}")
            return True
        except UsernameTaken:
            return False
        finally:
            store.close()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1
    winner = results.index(True)
    store = open_store(url)
    try:
        [stored] = [u for u in store.load() if u["username"] == "contested"]
        assert stored["password_hash"] == f"hash-{winner}"
        with pytest.raises(UsernameTaken):
            store.insert(user("contested", 99), "n99")
    finally:
        store.close()


def test_boot_loads_every_user_in_pages(url: str) -> None:
    from logonmesh.discovery.redis import RedisStore
    store = RedisStore(url, page=100)
    try:
        expected = {f"user{i}": user(f"user{i}", i) for i in range(2500)}
        assert store.restore(list(expected.values())) == 2500
        raw(url).hset(f"{parse_url(url)[1]}:user:broken", mapping={"username": "broken"})
        calls = []
        real = store.link.hgetall_many
        store.link.hgetall_many = lambda what, keys: calls.append(len(keys)) or real(what, keys)
        loaded = {u["username"]: u for u in store.load()}
        assert loaded == expected
        assert store.bad_rows == 1
        assert len(calls) > 1 and max(calls) < 2500, f"one page per round trip, got {calls[:5]}..."
        assert store.restore(list(expected.values())[:10]) == 0, "existing users win"
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request, url: str, tmp_path) -> Iterator:
    """The durable store on both backends: records must behave the same on each."""
    store = open_store(str(tmp_path / "cluster.db") if request.param == "sqlite" else url)
    yield store
    store.close()


def test_records_round_trip_with_their_version(any_store) -> None:
    entries = [Entry("r", "budget/alice/" + uuid.uuid4().hex, 123456789 << 16, "node1",
                     {"v": {"user": "alice", "label": "rent", "cents": -120000, "raw": b"\x00\xff"}}, 0),
               Entry("r", "prefs/glob*[x]?", 5, "node2", {"v": None}, 0),      # a None value is not a tombstone
               Entry("r", "prefs/gone", 6, "node2", None, 0)]                   # a tombstone is durable too
    for entry in entries:
        any_store.save_record(stored_record(entry))
    assert sorted(map(record_entry, any_store.load_records())) == sorted(entries), "boot must rebuild the same entries"


def test_a_stored_record_is_replaced_only_by_a_higher_version(any_store) -> None:
    """Last-writer-wins in the store too, whatever order two nodes' writes land in."""
    key = "app/k"
    newest = Entry("r", key, 2**62 + 7, "n2", {"v": "newest"}, 0)
    any_store.save_record(stored_record(newest))
    any_store.save_record(stored_record(Entry("r", key, 2**62 + 7, "n1", {"v": "same time, lower origin"}, 0)))
    any_store.save_record(stored_record(Entry("r", key, 2**62 + 6, "n9", {"v": "older"}, 0)))
    assert list(map(record_entry, any_store.load_records())) == [newest]
    tombstone = Entry("r", key, 2**62 + 8, "n1", None, 0)
    any_store.save_record(stored_record(tombstone))
    assert list(map(record_entry, any_store.load_records())) == [tombstone]


def test_unreachable_redis_is_one_clear_error() -> None:
    store = open_store("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            list(store.load())
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.insert(user("anyone"), "n1")
        assert time.monotonic() - t0 < 0.1, "the breaker fails at once while the server is known down"
    finally:
        store.close()


def test_daemon_refuses_to_start_without_redis(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "logonmesh", "daemon", "--name", "a", "--db", "redis://127.0.0.1:1/0",
                           "--cookie", "x", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "redis at redis://127.0.0.1:1/0 is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- a cluster on Redis -----------------------------------------------------------

def test_cluster_on_redis_signs_up_and_replicates(url: str) -> None:
    with LocalCluster(heartbeat_ms=100, env={"LOGONMESH_DB": url}) as cluster:
        n1, n2 = cluster.start_nodes("node", 2)
        b = Browser(n1.url)
        resp = b.signup("alice", PASSWORD)
        assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), resp.text[:300]
        assert b.signup("alice", PASSWORD).status_code == 200, "a second sign-up is refused on the form"
        eventually(lambda: _assert(n2.call("user", username="alice") is not None), timeout=10)
        c = Browser(n2.url)
        assert c.login("alice", PASSWORD).headers.get("Location") == "/budget"
        assert c.authenticated()
        assert b.at(n1.url).login("alice", PASSWORD).status_code == 302
        eventually(lambda: _assert(b.at(n2.url).authenticated()), timeout=10)
        prefix = parse_url(url)[1]
        assert raw(url).hget(f"{prefix}:user:alice", "username") == "alice"
        assert {k.rsplit(":", 1)[1] for k in raw(url).scan_iter(f"{prefix}:node:*")} == {"node1", "node2"}
        # a third node loads alice from Redis at boot (its log counts the users it loaded)
        [n3] = cluster.start_nodes("node", 1)
        assert n3.call("user", username="alice")["username"] == "alice"
        assert ", 1 users" in n3.daemon.logs()
    keys = set(raw(url).scan_iter(f"{prefix}:node:*"))
    assert not keys, f"a clean shutdown withdraws every row, left {keys}"



def test_a_redis_that_forgot_everything_gets_its_users_back(url: str) -> None:
    """Redis without persistence restarts empty: the nodes notice their rows are gone, announce again
    and write back every user they hold, so a node that boots afterwards still knows them."""
    with LocalCluster(heartbeat_ms=100, env={"LOGONMESH_DB": url}) as cluster:
        n1, n2 = cluster.start_nodes("node", 2)
        assert Browser(n1.url).signup("alice", PASSWORD).status_code == 302
        eventually(lambda: _assert(n2.call("user", username="alice") is not None), timeout=10)
        prefix = parse_url(url)[1]
        client = raw(url)
        client.delete(*client.scan_iter(f"{prefix}:*"))  # what a restart without persistence leaves
        eventually(lambda: _assert(client.hget(f"{prefix}:user:alice", "username") == "alice"), timeout=10)
        eventually(lambda: _assert({k.rsplit(":", 1)[1] for k in client.scan_iter(f"{prefix}:node:*")}
                                   == {"node1", "node2"}), timeout=10)
        assert "restored 1 users the store had lost" in n1.daemon.logs() + n2.daemon.logs()
        [n3] = cluster.start_nodes("node", 1)
        assert n3.call("user", username="alice")["username"] == "alice"

def _assert(condition: bool) -> None:
    assert condition


# ---- app records across real daemons -------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_record_put_on_one_node_is_read_on_the_other_and_survives_a_restart(url: str, backend: str) -> None:
    """Replicated by the bus, and durable: with every daemon stopped, a fresh boot reads it from the store."""
    env = {"LOGONMESH_DB": url} if backend == "redis" else {}
    with LocalCluster(heartbeat_ms=100, env=env) as cluster:
        n1, n2 = cluster.start_nodes("node", 2, web=False)
        put = n1.call("record_put", namespace="notes", key="alice/1", value={"text": "hello", "n": [1, 2]})
        n1.call("record_put", namespace="notes", key="alice/2", value="doomed")
        n1.call("record_delete", namespace="notes", key="alice/2")
        eventually(lambda: _assert(n2.call("record_get", namespace="notes", key="alice/1") == put), timeout=10)
        eventually(lambda: _assert(n2.call("record_get", namespace="notes", key="alice/2") is None
                                   and n2.status()["cache"]["records"] == 1), timeout=10)
        for node in (n1, n2):
            node.stop()
        n2.restart()
        assert n2.call("record_get", namespace="notes", key="alice/1") == put, "rebuilt from the store"
        assert n2.call("record_items", namespace="notes", prefix="alice/")["items"] == [put]
        assert n2.call("record_get", namespace="notes", key="alice/2") is None, "the tombstone is durable too"
        n1.restart()
        eventually(lambda: _assert(n1.status()["digest"] == n2.status()["digest"]), timeout=10)
