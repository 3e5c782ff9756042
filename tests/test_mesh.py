"""The mesh with real daemons: discovery, liveness, replication, restart, repair and bad input.

Every test runs real ``python -m logonmesh daemon`` processes (no web) on real
sockets and one real SQLite file in a temporary directory, through the
harness in logonmesh/testing.py.  Nothing sleeps and hopes: every wait is
``eventually`` with a deadline.  Heartbeats are 100 ms, so a peer is down after
300 ms of silence and its registry row is deleted after 3 s.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest
import sqlite_utils
import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.client import DaemonError
from logonmesh.testing import LocalCluster, Node, eventually

REPLICATION_DEADLINE = 2.0


# ---- helpers --------------------------------------------------------------------


def registry(cluster: LocalCluster) -> dict[str, dict]:
    """The clusters table, read straight from the file."""
    db = sqlite_utils.Database(cluster.db)
    try:
        return {row["id"]: row for row in db["clusters"].rows}
    finally:
        db.close()


def user_rows(cluster: LocalCluster, username: str | None = None) -> list[dict]:
    db = sqlite_utils.Database(cluster.db)
    try:
        if username is None:
            return list(db["users"].rows)
        return list(db["users"].rows_where("username = ?", [username]))
    finally:
        db.close()


def wait_for(predicate, timeout: float, what: str = "the condition") -> None:
    """eventually() for a predicate: a False result means "not yet", never success."""
    def check() -> None:
        assert predicate(), f"{what} did not hold within {timeout} s"
    eventually(check, timeout=timeout)


def stats(node: Node) -> dict[str, int]:
    return node.status()["stats"]


def has_user(node: Node, username: str) -> dict:
    user = node.call("user", username=username)
    assert user is not None, f"{node.name} does not know {username} yet"
    return user


def resolves(node: Node, token: str) -> dict:
    found = node.call("session_resolve", token=token)
    assert found is not None, f"{node.name} does not resolve the session yet"
    return found


def revoked(node: Node, token: str) -> None:
    assert node.call("session_resolve", token=token) is None, f"{node.name} still resolves the session"


def converged(cluster: LocalCluster) -> None:
    digests = {n.name: n.status()["digest"] for n in cluster.live()}
    assert len(set(digests.values())) == 1, f"digests differ: {digests}"


def sees_exactly(node: Node, names: list[str]) -> None:
    assert node.peers_up() == sorted(names), f"{node.name} sees {node.peers_up()}, expected {sorted(names)}"


def run_daemon_cli(cluster: LocalCluster, name: str) -> subprocess.CompletedProcess:
    env = dict(cluster.env, LOGONMESH_NODE=name)
    return subprocess.run([sys.executable, "-m", "logonmesh", "daemon"], env=env, capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pair(two_daemons: LocalCluster) -> LocalCluster:
    """The shared two daemons (tests/conftest.py), for the tests that need no fresh cluster."""
    return two_daemons


def cache_counts(node: Node) -> tuple[int, int, int]:
    counts = node.status()["cache"]
    return counts["users"], counts["sessions"], counts["tombstones"]


# ---- discovery and liveness --------------------------------------------------------


def test_two_then_three_daemons_find_each_other():
    """The table is polled once a minute here, so only the start-up read and the announce can do it."""
    with LocalCluster(heartbeat_ms=100, discovery_ms=60_000) as cluster:
        n1, n2 = cluster.start_nodes("n", 2, web=False)
        sees_exactly(n1, ["n2"])
        sees_exactly(n2, ["n1"])
        (n3,) = cluster.start_nodes("n", 1, web=False)
        for node in (n1, n2, n3):
            eventually(lambda: sees_exactly(node, [o.name for o in (n1, n2, n3) if o is not node]), timeout=5)

        rows = registry(cluster)
        assert set(rows) == {"n1", "n2", "n3"}
        for node in (n1, n2, n3):
            row, status = rows[node.name], node.status()
            assert set(row) == {"id", "bus_endpoint", "peer_endpoint", "host", "pid", "incarnation",
                                "started_at", "heartbeat_at"}
            assert row["bus_endpoint"] == status["bus"] and row["bus_endpoint"].startswith("tcp://")
            assert row["peer_endpoint"] == status["peer"] and row["peer_endpoint"].startswith("tcp://")
            assert (row["pid"], row["incarnation"]) == (node.daemon.pid, status["incarnation"])
            assert row["started_at"] <= row["heartbeat_at"] <= time.time() + 1
            peers = {p["name"]: p for p in node.call("peers")["peers"]}
            assert all(p["up"] and p["in_registry"] for p in peers.values())
        # heartbeats keep refreshing the row
        before = registry(cluster)["n1"]["heartbeat_at"]
        wait_for(lambda: registry(cluster)["n1"]["heartbeat_at"] > before, 2, "a heartbeat refresh")


def test_kill_9_is_reported_down_and_the_row_expires():
    with LocalCluster(heartbeat_ms=100, down_after=3) as cluster:
        n1, n2, n3 = cluster.start_nodes("n", 3, web=False)
        n3.daemon.kill()
        killed = time.monotonic()
        for node in (n1, n2):
            eventually(lambda: sees_exactly(node, [o.name for o in (n1, n2) if o is not node]), timeout=5)
        down_after = time.monotonic() - killed
        view = {p["name"]: p for p in n1.call("peers")["peers"]}["n3"]
        assert not view["up"] and "no heartbeat" in view["reason"]
        if time.monotonic() - killed < 2.5:  # (on a machine loaded enough to be slower, skip this check)
            assert "n3" in registry(cluster), "the row must outlive the down verdict"

        wait_for(lambda: "n3" not in registry(cluster), 10, "n3's row expiring")
        expired_after = time.monotonic() - killed
        # deleted once stale for 10 x (3 x 100 ms); its last heartbeat was at most 100 ms before the kill
        assert expired_after >= 2.5, f"the row went after {expired_after:.2f} s"
        assert set(registry(cluster)) == {"n1", "n2"}
        assert "peer n3 down" in n1.daemon.logs()
        print(f"\nkill -9: down after {down_after * 1000:.0f} ms, row deleted after {expired_after:.2f} s")


# ---- replication --------------------------------------------------------------------


def test_user_session_and_revocation_replicate(pair):
    a, b = pair.nodes
    eventually(lambda: converged(pair), timeout=REPLICATION_DEADLINE)
    before = [cache_counts(n) for n in (a, b)]
    created = a.call("register", username="alice", password_hash="scrypt:abc")
    user = eventually(lambda: has_user(b, "alice"), timeout=REPLICATION_DEADLINE)
    assert user == {"id": created["id"], "username": "alice", "password_hash": "scrypt:abc",
                    "created_at": created["created_at"]}

    session = a.call("session_create", username="alice", device="test")
    assert len(session["token"]) >= 43  # 256 bits, url-safe base64
    found = eventually(lambda: resolves(b, session["token"]), timeout=REPLICATION_DEADLINE)
    assert found == {"user": "alice", "uid": created["id"], "expires": session["expires"]}

    b.call("session_revoke", token=session["token"])          # revoked on the other node
    revoked(b, session["token"])
    eventually(lambda: revoked(a, session["token"]), timeout=REPLICATION_DEADLINE)

    other = b.call("session_create", username="alice", device="test")       # and the other way round
    eventually(lambda: resolves(a, other["token"]), timeout=REPLICATION_DEADLINE)
    a.call("session_revoke", token=other["token"])
    eventually(lambda: revoked(b, other["token"]), timeout=REPLICATION_DEADLINE)
    eventually(lambda: converged(pair), timeout=REPLICATION_DEADLINE)
    for node, (users, sessions, tombstones) in zip((a, b), before):
        assert cache_counts(node) == (users + 1, sessions, tombstones + 2)


def test_unknown_users_and_sessions(pair):
    a = pair.nodes[0]
    assert a.call("user", username="nobody") is None
    assert a.call("session_resolve", token="no-such-token") is None
    with pytest.raises(DaemonError, match="no such user"):
        a.call("session_create", username="nobody", device="test")


# ---- restart and late start -----------------------------------------------------------


def test_restart_keeps_users_and_gets_sessions_back():
    with LocalCluster(heartbeat_ms=100) as cluster:
        a, b = cluster.start_nodes("n", 2, web=False)
        names = [f"user{i}" for i in range(20)]
        for name in names:
            a.call("register", username=name, password_hash="h")
        live = [a.call("session_create", username=n, device="test")["token"] for n in names[:5]]
        live += [b.call("session_create", username=n, device="test")["token"] for n in names[5:10]]
        gone = [live.pop(0), live.pop()]
        a.call("session_revoke", token=gone[0])
        b.call("session_revoke", token=gone[1])
        eventually(lambda: converged(cluster), timeout=5)

        started = time.monotonic()
        code = b.daemon.stop()
        took = time.monotonic() - started
        assert code == 0 and took < 2.0, f"SIGTERM: exit {code} after {took:.2f} s"
        assert not os.path.exists(b.client.ipc_path), "the ipc socket file must go"
        assert "n2" not in registry(cluster), "the row must be withdrawn on a clean exit"
        eventually(lambda: sees_exactly(a, []), timeout=3)

        b.start()
        cluster.wait_ready([a, b])
        assert " 20 users" in b.daemon.logs().rsplit("node n2 up", 1)[1].splitlines()[0], "users load from the db"
        assert all(b.call("user", username=n) for n in names)
        for token in live:
            eventually(lambda: resolves(b, token), timeout=5)
        for token in gone:
            revoked(b, token)
        eventually(lambda: converged(cluster), timeout=5)

        started = time.monotonic()  # SIGINT is a clean exit too
        b.daemon.signal(signal.SIGINT)
        assert b.daemon.popen.wait(5) == 0
        assert time.monotonic() - started < 2.0
        assert not os.path.exists(b.client.ipc_path) and "n2" not in registry(cluster)


def test_a_repeated_sigterm_still_exits_0(local_cluster):
    """Supervisors and impatient people send the signal again; the exit must stay clean."""
    nodes = local_cluster.start_nodes("n", 2, web=False)
    for node in nodes:
        popen, started = node.daemon.popen, time.monotonic()
        while popen.poll() is None and time.monotonic() - started < 5:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(0.005)
            except subprocess.TimeoutExpired:
                pass
        assert popen.returncode == 0, f"{node.name} ended with {popen.returncode}"
        assert time.monotonic() - started < 2.0
        assert not os.path.exists(node.client.ipc_path) and node.name not in registry(local_cluster)


def test_late_start_gets_500_registrations_and_their_sessions(local_cluster):
    a, b = local_cluster.start_nodes("n", 2, web=False)
    names = [f"early{i}" for i in range(500)]
    for i, name in enumerate(names):
        (a if i % 2 else b).call("register", username=name, password_hash="h")
    tokens = [a.call("session_create", username=n, device="test")["token"] for n in names[:25]]
    eventually(lambda: converged(local_cluster), timeout=5)

    started = time.monotonic()
    (c,) = local_cluster.start_nodes("n", 1, web=False)

    def has_everything() -> None:
        assert c.status()["cache"]["users"] == 500
        assert all(c.call("session_resolve", token=t) for t in tokens)
        converged(local_cluster)

    eventually(has_everything, timeout=10)
    assert all(c.call("user", username=n) for n in names)
    print(f"\nlate start: 500 users and 25 sessions in {time.monotonic() - started:.2f} s")


# ---- bad input -----------------------------------------------------------------------------


def test_duplicate_username_is_taken_and_nothing_is_written(pair):
    a, b = pair.nodes
    first = a.call("register", username="dup", password_hash="one")
    with pytest.raises(DaemonError) as info:
        a.call("register", username="dup", password_hash="two")
    assert str(info.value) == "taken"
    eventually(lambda: has_user(b, "dup"), timeout=REPLICATION_DEADLINE)
    with pytest.raises(DaemonError, match="^taken$"):
        b.call("register", username="dup", password_hash="three")
    assert [(r["id"], r["password_hash"]) for r in user_rows(pair, "dup")] == [(first["id"], "one")]
    assert has_user(a, "dup")["password_hash"] == has_user(b, "dup")["password_hash"] == "one"


@pytest.mark.parametrize("username", ["", "x" * 257])
def test_a_username_the_wire_cannot_carry_is_refused_and_nothing_is_written(pair, username):
    """Peers refuse an entry whose key is empty or over 256 characters; registering one would split the cluster."""
    a, b = pair.nodes
    with pytest.raises(DaemonError):
        a.call("register", username=username, password_hash="h")
    assert user_rows(pair, username) == []
    longest = f"{len(username):03d}" + "x" * 253  # the longest that travels
    a.call("register", username=longest, password_hash="h")
    eventually(lambda: has_user(b, longest), timeout=REPLICATION_DEADLINE)
    eventually(lambda: converged(pair), timeout=REPLICATION_DEADLINE)
    assert stats(b).get("drop_schema", 0) == 0


@pytest.mark.parametrize("token", ["", "t" * 257])
def test_revoking_a_token_the_wire_cannot_carry_is_refused(pair, token):
    """A tombstone under such a key would be refused by every peer, and the digests would never agree again."""
    a, b = pair.nodes
    tombstones = cache_counts(a)[2]
    with pytest.raises(DaemonError):
        a.call("session_revoke", token=token)
    a.call("session_revoke", token=f"{len(token):03d}" + "t" * 253)  # the longest that travels
    eventually(lambda: converged(pair), timeout=REPLICATION_DEADLINE)
    assert cache_counts(a)[2] == cache_counts(b)[2] == tombstones + 1
    assert stats(b).get("drop_schema", 0) == 0


def test_simultaneous_registration_on_two_nodes_has_one_winner(pair):
    a, b = pair.nodes
    for i in range(5):
        name = f"race{i}"
        barrier = threading.Barrier(2)

        def register(node: Node, pw: str):
            barrier.wait()
            try:
                return node.call("register", username=name, password_hash=pw)
            except DaemonError as exc:
                return str(exc)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(register, (a, b), ("from-a", "from-b")))
        winners = [r for r in results if isinstance(r, dict)]
        assert len(winners) == 1 and results.count("taken") == 1, results
        rows = user_rows(pair, name)
        assert [r["id"] for r in rows] == [winners[0]["id"]]
        for node in (a, b):
            eventually(lambda: has_user(node, name), timeout=REPLICATION_DEADLINE)
            assert has_user(node, name)["id"] == winners[0]["id"]
    eventually(lambda: converged(pair), timeout=REPLICATION_DEADLINE)


def _raw_reply(sock: zmq.Socket, key: bytes) -> wire.Envelope:
    assert sock.poll(2000), "no reply within 2 s"
    return wire.decode(key, sock.recv())


def test_garbage_on_the_ipc_socket_gets_an_error_and_the_daemon_keeps_serving(pair):
    a = pair.nodes[0]
    key = wire.wire_key(pair.cookie.encode())
    good = wire.Codec(pair.cookie.encode(), "tester", 1)
    evil = wire.Codec(b"not the cluster cookie", "tester", 1)
    body = msgpack.packb([wire.VERSION, "req", "tester", 1, 99, 0, {"id": 99, "op": "ping", "args": {b"x": 1, "y": 2}}],
                         use_bin_type=True)
    import hashlib
    import hmac
    mixed_keys = body + hmac.new(key, body, hashlib.sha256).digest()
    cases = [  # (frames, request id the reply must carry)
        ([b"junk"], 0),
        ([b""], 0),
        ([os.urandom(300)], 0),
        ([b"one", b"two", b"three"], 0),
        ([good.encode("req", {"id": 1, "op": "ping", "args": {}}), b"extra"], 0),
        ([evil.encode("req", {"id": 5, "op": "ping", "args": {}})], 0),
        ([good.encode("rep", {"id": 6, "ok": True, "result": None, "error": None})], 0),
        ([good.encode("hb", {"size": 0, "digest": b"", "bus": "", "peer": ""})], 0),
        ([good.encode("req", {"id": 7, "op": "no_such_op", "args": {}})], 7),
        ([good.encode("req", {"id": 8, "op": "register", "args": {"username": "x"}})], 8),
        ([good.encode("req", {"id": 9, "op": "user", "args": {"username": 5}})], 9),
        ([good.encode("req", {"id": 10, "op": "ping", "args": {"extra": True}})], 10),
        ([good.encode("req", {"id": 11, "op": "cache", "args": {"user": None, "sessions": 1, "limit": 5}})], 11),
        ([good.encode("req", {"id": 12, "op": "__init__", "args": {}})], 12),
        ([mixed_keys], 99),
    ]
    before = stats(a)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{a.client.ipc_path}")
    try:
        for frames, req_id in cases:
            sock.send_multipart(frames)
            reply = _raw_reply(sock, key)
            assert reply.type == "rep" and reply.sender == a.name
            assert reply.payload["ok"] is False and reply.payload["error"].startswith("bad request"), reply
            assert reply.payload["id"] == req_id
            assert a.call("ping")["node"] == a.name  # still serving, after every one
        sock.send(good.encode("req", {"id": 100, "op": "register", "args": {"username": "ok",
                                                                            "password_hash": "h"}}))
        assert _raw_reply(sock, key).payload["ok"] is True  # the same connection still works
    finally:
        sock.close()
    after = stats(a)
    assert after.get("ipc_bad_request", 0) - before.get("ipc_bad_request", 0) == len(cases)
    assert after.get("drop_bad_signature", 0) >= 2  # random bytes, the wrong key
    assert after.get("drop_truncated", 0) >= 2      # b"junk" and b"": shorter than a MAC
    assert after.get("internal_errors", 0) == 0 and after.get("ipc_errors", 0) == 0
    assert a.daemon.alive and has_user(a, "ok")


def test_a_second_daemon_with_the_same_name_refuses_and_the_first_keeps_working(pair):
    a = pair.nodes[0]
    row = registry(pair)[a.name]
    proc = run_daemon_cli(pair, a.name)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and "already running" in lines[0] and a.name in lines[0], proc.stderr
    assert os.path.exists(a.client.ipc_path)
    assert a.call("ping")["node"] == a.name
    assert registry(pair)[a.name]["pid"] == row["pid"] == a.daemon.pid
    a.call("register", username="still-here", password_hash="h")


def test_a_dozen_daemons_share_one_file_without_lock_errors():
    with LocalCluster(heartbeat_ms=100, ready_timeout=40) as cluster:
        nodes = cluster.start_nodes("d", 12, web=False)
        assert set(registry(cluster)) == {n.name for n in nodes}

        def register_three(node: Node) -> None:  # every node writes at once
            for i in range(3):
                node.call("register", username=f"{node.name}-{i}", password_hash="h")

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(register_three, nodes))
        assert len(user_rows(cluster)) == 36
        eventually(lambda: converged(cluster), timeout=10)
        for node in nodes:
            node.daemon.signal(signal.SIGTERM)  # all leave at once: twelve withdrawals on one file
        codes = [node.daemon.popen.wait(10) for node in nodes]
        assert codes == [0] * 12
        assert registry(cluster) == {}
        for node in nodes:
            logs = node.daemon.logs()
            assert "database is locked" not in logs, logs
            assert "Traceback" not in logs, logs


# ---- repair of lost messages ----------------------------------------------------------------


def test_a_merge_lost_on_the_bus_is_repaired_by_the_sequence_gap():
    # 200 ms heartbeats: a peer is down after 600 ms, far longer than the loss window below
    with LocalCluster(heartbeat_ms=200) as cluster:
        a, b = cluster.start_nodes("n", 2, web=False)
        # let the start-up repairs finish, so that the one below is the gap's own
        wait_for(lambda: min(stats(a).get("in_hb", 0), stats(b).get("in_hb", 0)) >= 3, 5, "three heartbeats")
        eventually(lambda: converged(cluster), timeout=5)
        before = stats(b)
        cluster.lossy(b, 1.0)
        a.call("register", username="lost", password_hash="h")
        dropped = stats(b).get("drop_lossy", 0)
        # the bus is FIFO: once one more frame is dropped, the merge has been dropped too
        wait_for(lambda: stats(b).get("drop_lossy", 0) > dropped, 2, "one more dropped frame")
        cluster.lossy(b, 0.0)
        eventually(lambda: has_user(b, "lost"), timeout=5)
        # the gap shows at a's next heartbeat; a may also have pushed the entry first (digest mismatch)
        wait_for(lambda: stats(b).get("repairs_for_seq_gap", 0) > before.get("repairs_for_seq_gap", 0), 2,
                 "a repair for the sequence gap")
        assert stats(b).get("seq_gaps", 0) > before.get("seq_gaps", 0)
        assert b.peers_up() == ["n1"], "the loss was too short to take the peer down"
        eventually(lambda: converged(cluster), timeout=5)


def test_a_message_that_never_reached_a_node_is_repaired_by_digest_mismatch(local_cluster):
    """n2 and n3 cannot hear each other; n1 hears both.  n3's merge reaches n1 only, and n1 does
    not republish bus merges, so no sequence gap appears on n2: only the digest can tell."""
    n1, n2, n3 = local_cluster.start_nodes("n", 3, web=False)
    local_cluster.partition([n1, n2], [n1, n3])
    eventually(lambda: sees_exactly(n2, ["n1"]), timeout=2)
    before = {n.name: stats(n) for n in (n1, n2)}
    n3.call("register", username="via-n1", password_hash="h")
    eventually(lambda: has_user(n1, "via-n1"), timeout=REPLICATION_DEADLINE)
    eventually(lambda: has_user(n2, "via-n1"), timeout=5)
    after = {n.name: stats(n) for n in (n1, n2)}

    def total(counts: dict, key: str) -> int:
        return sum(c.get(key, 0) for c in counts.values())

    # either side may start it (n1 also sees n2's digest differ, and pushes what n2 lacks)
    assert total(after, "repairs_for_digest_mismatch") > total(before, "repairs_for_digest_mismatch")
    assert total(after, "seq_gaps") == total(before, "seq_gaps")
    assert n2.status()["digest"] == n1.status()["digest"]


# ---- how fast ---------------------------------------------------------------------------------


def test_registration_on_a_resolves_on_b_latency(pair):
    """Not a benchmark assertion: every registration must arrive within the deadline; timings are printed."""
    a, b = pair.nodes
    total, after_reply = [], []
    for i in range(300):
        name = f"lat{i}"
        t0 = time.perf_counter()
        a.call("register", username=name, password_hash="h")
        t1 = time.perf_counter()
        eventually(lambda: has_user(b, name), timeout=REPLICATION_DEADLINE, interval=0)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        after_reply.append((t2 - t1) * 1000)

    def describe(values: list[float]) -> str:
        return (f"median {statistics.median(values):.2f} ms, p99 {sorted(values)[int(len(values) * .99)]:.2f} ms, "
                f"worst {max(values):.2f} ms")

    print(f"\nregister on A -> visible on B, 300 users: {describe(total)}"
          f"\n  of which after A's reply (bus + B's merge + one B lookup): {describe(after_reply)}")


def test_a_stop_while_booting_still_leaves_cleanly(tmp_path) -> None:
    """SIGTERM as soon as the daemon holds its name (the lock file), while it is still loading users."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import uuid

    from logonmesh.discovery.sqlite import open_db

    with LocalCluster() as cluster:
        open_db(cluster.db).conn.close()
        with sqlite3.connect(cluster.db) as conn:  # enough users that loading them takes a while
            conn.executemany("insert into users (id, username, password_hash, created_at) values (?,?,?,?)",
                             ((uuid.uuid4().hex, f"boot{i}", "h", "2026-01-01T00:00:00.000+00:00")
                              for i in range(50_000)))
        env = dict(cluster.env, LOGONMESH_NODE="early")
        lock = os.path.join(cluster.run_dir, "early.lock")
        proc = subprocess.Popen([sys.executable, "-m", "logonmesh", "daemon"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: os.path.exists(lock), timeout=20, interval=0.001)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, proc.stdout.read().decode()[-2000:]
        finally:
            proc.kill()
            proc.wait()
        assert not os.path.exists(os.path.join(cluster.run_dir, "early.ipc"))
        rows = sqlite3.connect(cluster.db).execute("select id from clusters where id = 'early'").fetchall()
        assert rows == []
