"""A wrong cookie gets nothing: no node accepts a single message signed with it.

Two impostors share the registry with a healthy two-node cluster:

* a real daemon started with another cookie (and its own database: a writer
  of the cluster's user store needs no cookie, see SECURITY.md), which
  heartbeats and publishes the merge of a user registered on it;
* a forger in this process that publishes merges (a new user, a tombstone
  for an existing one, a session), answers every request it gets with forged
  repair replies full of entries, and pushes entries to every peer socket,
  under its own name and under a member's.

Each forged frame must be counted as ``bad_signature`` by every node it
reached, and no node's data may change.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterator

import msgpack
import pytest

from logonmesh.daemon import wire
from logonmesh.daemon.cache import user_entry
from logonmesh.daemon.client import DaemonClient
from logonmesh.discovery.sqlite import open_db
from logonmesh.testing import LocalCluster, Proc, eventually
from hostile_kit import Rogue, assert_no_crash, dealer, drops, stats, tally

SESSION_META = {"node": "n1", "created_at": "t0", "last_seen": "t0", "device": ""}  # a session's shown fields

WRONG_COOKIE = b"a cookie from some other cluster"


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as cluster:
        cluster.start_nodes("node", 2, web=False)
        cluster.nodes[0].call("register", username="victim", password_hash="scrypt:victim")
        eventually(cluster.converged)
        yield cluster


def intruder(name: str) -> dict:
    return {"id": os.urandom(16).hex(), "username": name, "password_hash": "scrypt:forged",
            "created_at": "2030-01-01T00:00:00.000+00:00"}


def forged_entries() -> list[list]:
    """A new user, a tombstone that would delete a real one, and a session for the real one."""
    later = time.time_ns() // 1_000_000 << 16
    return [user_entry(intruder("intruder")),
            ["u", "victim", later, "node2", None, 0],
            ["s", "forged-token" * 4, later, "node2", {"uid": "0" * 32, "user": "victim", **SESSION_META},
             int(time.time() * 1000) + 3_600_000]]


def test_a_daemon_with_the_wrong_cookie_is_never_heard(local_cluster: LocalCluster) -> None:
    """Its own database (a writer of the cluster's store could add users without any cookie), its row in ours."""
    before = {n.name: (stats(n), n.status()["digest"]) for n in local_cluster.nodes}
    own_db = os.path.join(local_cluster.dir, "impostor.db")
    env = dict(local_cluster.env, LOGONMESH_NODE="impostor", LOGONMESH_COOKIE=WRONG_COOKIE.decode(),
               LOGONMESH_DB=own_db)
    proc = Proc("impostor daemon", [sys.executable, "-m", "logonmesh", "daemon"], env,
                os.path.join(local_cluster.dir, "impostor.daemon.log"))
    client = DaemonClient(os.path.join(local_cluster.run_dir, "impostor.ipc"), WRONG_COOKIE, name="impostor-cli")
    proc.start()
    try:
        eventually(lambda: client.call("ping", timeout_ms=500), timeout=20)
        _copy_row("impostor", own_db, local_cluster.db)
        client.call("register", username="impostor-user", password_hash="scrypt:impostor")
        for node in local_cluster.nodes:  # its heartbeats and its merge arrive, and are refused
            eventually(lambda: _refused_at_least(node, before[node.name][0], "bad_signature", 5), timeout=10)
        tally["wrong-cookie daemon frames refused"] += sum(
            drops(before[n.name][0], stats(n))["bad_signature"] for n in local_cluster.nodes)
        for node in local_cluster.nodes:
            assert node.call("user", username="impostor-user") is None
            assert "impostor" not in node.peers_up()
            assert node.status()["digest"] == before[node.name][1]
        assert proc.alive, proc.logs()
    finally:
        client.close()
        proc.stop()
        _delete_row("impostor", local_cluster.db)
    assert "Traceback" not in proc.logs(), proc.logs()
    assert_no_crash(local_cluster)


def _copy_row(name: str, source: str, target: str) -> None:
    """Put a node's registry row into another database, with a heartbeat no daemon will prune."""
    src, dst = open_db(source), open_db(target)
    try:
        row = dict(src["clusters"].get(name), heartbeat_at=time.time() + 3600)
        dst["clusters"].upsert(row, pk="id")
    finally:
        src.conn.close()
        dst.conn.close()


def _delete_row(name: str, path: str) -> None:
    db = open_db(path)
    try:
        db.execute("delete from clusters where id = ?", [name])
    finally:
        db.conn.close()


def _refused_at_least(node, before, reason: str, n: int) -> None:
    got = drops(before, stats(node))[reason]
    assert got >= n, f"{node.name}: {got} refused as {reason}, waiting for {n}"


def test_forged_merges_repair_answers_and_pushes_are_all_refused(local_cluster: LocalCluster) -> None:
    nodes = local_cluster.nodes
    before = {n.name: (stats(n), n.status()["digest"]) for n in nodes}
    forger = Rogue(local_cluster.db, name="forger")
    try:
        forger.register()
        forger.wait_subscribers(len(nodes))
        sent = _forge(forger, local_cluster)
        for node in nodes:
            eventually(lambda: _refused_exactly(node, before[node.name][0], sent[node.name]), timeout=15)
        tally["forged frames (wrong cookie)"] += sum(sent.values())
        for node in nodes:
            assert node.call("user", username="intruder") is None
            assert node.call("user", username="victim") is not None
            assert node.call("session_resolve", token="forged-token" * 4) is None
            assert node.status()["digest"] == before[node.name][1], f"{node.name} changed its data"
    finally:
        forger.close()
    local_cluster.wait_ready()
    assert_no_crash(local_cluster)


def _refused_exactly(node, before, n: int) -> None:
    got = drops(before, stats(node))
    assert got == {"bad_signature": n}, f"{node.name} refused {dict(got)}; {n} forged frames reached it"


def _forge(forger: Rogue, cluster: LocalCluster) -> dict[str, int]:
    """Send every kind of forgery; return how many frames reached each node."""
    nodes = cluster.nodes
    codecs = [wire.Codec(WRONG_COOKIE, "forger"), wire.Codec(WRONG_COOKIE, "node2", incarnation=2**60)]
    sent = {n.name: 0 for n in nodes}
    for codec in codecs:  # on the bus, to everyone
        forger.publish([codec.encode("merge", {"entries": forged_entries()}),
                        codec.encode("hb", {"size": 99, "digest": b"\0" * 16, "bus": forger.bus,
                                            "peer": forger.peer})])
        for name in sent:
            sent[name] += 2
    requests = eventually(lambda: _requests_from(forger, {n.name for n in nodes}))
    for ident, sender in requests:  # every request answered with every kind of forged repair answer
        for reply in _forged_replies(codecs[0]):
            forger.router.send_multipart([ident, reply])
            sent[sender] += 1
    socks = [dealer(forger.ctx, n.status()["peer"]) for n in nodes]  # unsolicited, to every peer socket
    forger.keep.extend(socks)  # a socket that is collected closes and drops what it still holds
    for node, sock in zip(nodes, socks):
        for codec in codecs:
            for type_, payload in (("push", {"entries": forged_entries()}),
                                   ("announce", {"bus": forger.bus, "peer": forger.peer}),
                                   ("tree_req", {"root": b"\0" * 16, "groups": b"\0" * 16 * 64})):
                sock.send(codec.encode(type_, payload))
                sent[node.name] += 1
    return sent


def _requests_from(forger: Rogue, names: set[str]) -> list[tuple[bytes, str]]:
    """(identity, sender) of the request each daemon sent us (their announce), read without the key."""
    forger.drain()
    found = {}
    for ident, frame in forger.received:
        sender = msgpack.unpackb(frame[:-wire.MAC_SIZE])[2]
        found[sender] = ident
    assert names <= found.keys(), f"requests so far from {sorted(found)}"
    return [(ident, sender) for sender, ident in found.items() if sender in names]


def _forged_replies(codec: wire.Codec) -> list[bytes]:
    entries = forged_entries()
    return [codec.encode("ack", {}),
            codec.encode("tree_rep", {"groups": [0], "leaves": b"\0" * 16 * 64}),
            codec.encode("diff_rep", {"entries": entries, "want": b""}),
            codec.encode("sync_rep", {"entries": entries, "digest": b"\0" * 16}),
            codec.encode("pong", {"n": 1, "t": 1.0})]
