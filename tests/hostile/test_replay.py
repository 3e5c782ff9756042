"""Replay: genuine messages, captured and sent again later, are refused and change nothing.

The captures are real: a SUB with the cluster cookie listens to a daemon's
bus (what anyone who can reach the port sees without CURVE), and the rogue
peer receives the ``announce`` every daemon sends to a new registry row.  A
replay goes back in through the rogue's bus or straight to a peer socket.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest
import zmq

from logonmesh.daemon import wire
from logonmesh.testing import LocalCluster, Node, eventually
from hostile_kit import Rogue, assert_no_crash, dealer, drops, stats, tally

REPLAYS = 3


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as cluster:
        cluster.start_nodes("node", 2, web=False)
        yield cluster


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def rogue(local_cluster: LocalCluster) -> Iterator[Rogue]:
    rogue = Rogue(local_cluster.db, name="replayer")
    try:
        rogue.register()
        rogue.wait_subscribers(len(local_cluster.nodes))
        yield rogue
    finally:
        rogue.close()


def key_of(cluster: LocalCluster) -> bytes:
    return wire.wire_key(cluster.cookie.encode())


def capture_merge(ctx: zmq.Context, cluster: LocalCluster, node: Node, username: str) -> bytes:
    """Listen to node's bus, register a user there, and return the signed merge frame that carried it."""
    tap = ctx.socket(zmq.SUB)
    tap.linger = 0
    tap.subscribe(b"")
    tap.connect(node.status()["bus"])
    key = key_of(cluster)
    try:
        eventually(lambda: _next_of(tap, key, "hb"))  # subscribed: the slow-joiner gap is behind us
        node.call("register", username=username, password_hash="scrypt:captured")
        return eventually(lambda: _next_of(tap, key, "merge", username))
    finally:
        tap.close(0)


def _next_of(tap: zmq.Socket, key: bytes, type_: str, key_in_entry: str | None = None) -> bytes:
    while tap.poll(0):
        frame = tap.recv()
        env = wire.decode(key, frame)
        if env.type == type_ and (key_in_entry is None
                                  or any(e[1] == key_in_entry for e in env.payload["entries"])):
            return frame
    raise AssertionError(f"no {type_} captured yet")


def test_a_replayed_bus_merge_is_refused_and_changes_nothing(local_cluster: LocalCluster, ctx: zmq.Context,
                                                             rogue: Rogue) -> None:
    n1, n2 = local_cluster.nodes
    merge = capture_merge(ctx, local_cluster, n1, "captured-user")
    eventually(lambda: n2.call("user", username="captured-user") is not None)
    eventually(local_cluster.converged)
    before = {n.name: (stats(n), n.status()["digest"]) for n in (n1, n2)}

    rogue.publish([merge] * REPLAYS)
    tally["replayed frames"] += REPLAYS * 2

    eventually(lambda: _assert_counted(n2, before[n2.name][0], "replay", REPLAYS))
    eventually(lambda: _assert_counted(n1, before[n1.name][0], "own_name", REPLAYS))
    for node in (n1, n2):
        assert node.status()["digest"] == before[node.name][1], f"{node.name} changed its data"
        assert node.status()["refused_by_sender"]["node1"].get("replay" if node is n2 else "own_name")
    local_cluster.wait_ready()
    assert_no_crash(local_cluster)


def _assert_counted(node: Node, before: dict, reason: str, n: int) -> None:
    got = drops(before, stats(node))[reason]
    assert got == n, f"{node.name}: {got} of {n} refused as {reason}"


def test_a_replayed_ping_on_the_peer_socket_is_refused(local_cluster: LocalCluster, ctx: zmq.Context) -> None:
    """A tool's ping (as `logonmesh ping` sends it) answered once; the same frame again gets no pong."""
    node = local_cluster.nodes[0]
    codec = wire.Codec(local_cluster.cookie.encode(), "hostile-tool")
    key = key_of(local_cluster)
    sock = dealer(ctx, node.status()["peer"])
    try:
        ping = codec.encode("ping", {"n": 1, "t": time.time()})
        sock.send(ping)
        assert wire.decode(key, _recv(sock)).type == "pong"
        before = stats(node)
        for _ in range(REPLAYS):
            sock.send(ping)
        tally["replayed frames"] += REPLAYS
        eventually(lambda: _assert_counted(node, before, "replay", REPLAYS))
        sock.send(codec.encode("ping", {"n": 2, "t": time.time()}))  # the sender itself is not shut out
        pong = wire.decode(key, _recv(sock))
        assert pong.payload["n"] == 2, "a replay was answered"
    finally:
        sock.close(0)


def test_a_frame_from_an_older_incarnation_is_refused(local_cluster: LocalCluster, ctx: zmq.Context) -> None:
    """Never sent before, but signed by a stream the sender has since replaced (a restart)."""
    node = local_cluster.nodes[1]
    cookie = local_cluster.cookie.encode()
    old = wire.Codec(cookie, "restarting-tool")
    stale = old.encode("ping", {"n": 1, "t": time.time()})
    new = wire.Codec(cookie, "restarting-tool", incarnation=old.incarnation + 1)
    sock = dealer(ctx, node.status()["peer"])
    try:
        sock.send(new.encode("ping", {"n": 2, "t": time.time()}))
        assert wire.decode(key_of(local_cluster), _recv(sock)).payload["n"] == 2
        before = stats(node)
        sock.send(stale)
        tally["replayed frames"] += 1
        eventually(lambda: _assert_counted(node, before, "replay", 1))
        assert not sock.poll(200), "the stale ping was answered"
    finally:
        sock.close(0)


def test_a_captured_announce_is_refused_when_replayed(local_cluster: LocalCluster, ctx: zmq.Context,
                                                      rogue: Rogue) -> None:
    """Every daemon announces itself to a new registry row, so the rogue holds a genuine peer message.

    Sent to another member it is new there once (and harmless: it tells the
    truth about its sender); again, it is a replay.  Sent back to its own
    sender, it is refused: a node must never take itself for a peer.
    """
    n1, n2 = local_cluster.nodes
    announces = eventually(lambda: _announces(rogue, local_cluster, {"node1", "node2"}))
    frame = announces["node1"]
    before = {n.name: stats(n) for n in (n1, n2)}
    socks = []  # kept referenced (a collected socket closes, dropping what it holds) until the ctx goes
    for target, times in ((n2, 1 + REPLAYS), (n1, REPLAYS)):
        socks.append(dealer(ctx, target.status()["peer"]))
        for _ in range(times):
            socks[-1].send(frame)
    tally["replayed frames"] += 1 + 2 * REPLAYS
    eventually(lambda: _assert_counted(n2, before["node2"], "replay", REPLAYS))
    eventually(lambda: _assert_counted(n1, before["node1"], "own_name", REPLAYS))
    assert all(p["name"] != "node1" for p in n1.call("peers")["peers"]), "node1 took itself for a peer"
    local_cluster.wait_ready()
    assert_no_crash(local_cluster)


def _announces(rogue: Rogue, cluster: LocalCluster, names: set[str]) -> dict[str, bytes]:
    rogue.drain()
    key = key_of(cluster)
    found = {}
    for _, frame in rogue.received:
        env = wire.decode(key, frame)
        if env.type == "announce":
            found[env.sender] = frame
    assert names <= found.keys(), f"announces so far from {sorted(found)}"
    return found


def _recv(sock: zmq.Socket, timeout_ms: int = 5000) -> bytes:
    assert sock.poll(timeout_ms), "no answer"
    return sock.recv()
