"""Live daemons under fuzzing: hostile frames on the bus, the peer socket and the ipc socket.

Two real daemons; a rogue in this process registers itself in the ``clusters``
table, so both daemons subscribe to its bus and dial its peer socket, exactly
as they would for a member.  Each hypothesis example is a batch of frames that
every daemon must refuse (random, mutated, signed with another cookie, or
signed garbage and broken schemas, or valid messages on the wrong socket).
After each batch every daemon must have counted each frame under the reason
the decoder gives for it, and must answer a legitimate request.  Frames that
a member could legitimately send are left out: a cookie holder is trusted.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logonmesh.daemon import wire
from logonmesh.testing import LocalCluster, Node, eventually
from hostile_kit import (LIVE_BATCHES, PER_RECIPE, RECIPES, Rogue, assert_no_crash, bad_requests, dealer, drops,
                         expand, hostile_frames, refusal, stats, tally)

MAX_MSG = 64 * 1024
SPLIT_ODDS = 0.1
LIVE = settings(max_examples=LIVE_BATCHES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
# The genuine material leans to types each socket does not take, so "wrong_socket" is exercised too.
NOT_FOR_THE_BUS = sorted(wire.PEER_REQUESTS | wire.PEER_REPLIES | {"req", "rep"})
NOT_FOR_THE_PEER_SOCKET = sorted(wire.BUS_TYPES | wire.PEER_REPLIES | {"req", "rep"})


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """Named like the plugin's fixture so that a failure shows every node's log."""
    with LocalCluster(env={"LOGONMESH_MAX_MSG_BYTES": str(MAX_MSG)}) as cluster:
        cluster.start_nodes("node", 2, web=False)
        yield cluster


@pytest.fixture(scope="module")
def rogue(local_cluster: LocalCluster) -> Iterator[Rogue]:
    rogue = Rogue(local_cluster.db)
    try:
        rogue.register()
        rogue.wait_subscribers(len(local_cluster.nodes))
        yield rogue
    finally:
        rogue.close()


@pytest.fixture(scope="module")
def ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def key(local_cluster: LocalCluster) -> bytes:
    return wire.wire_key(local_cluster.cookie.encode())


def refused_batch(data: st.DataObject, strategy: st.SearchStrategy, key: bytes,
                  allowed: frozenset[str]) -> tuple[list[bytes], Counter]:
    """A batch of frames the socket must refuse, with the count of refusals expected per reason."""
    recipes = data.draw(st.lists(strategy, min_size=1, max_size=RECIPES))
    frames = expand(recipes, key, random.Random(data.draw(st.integers(0, 2**32))), PER_RECIPE)
    reasons = [refusal(key, frame, allowed) for frame in frames]
    kept = [(f, r) for f, r in zip(frames, reasons) if r is not None]
    return [f for f, _ in kept], Counter(r for _, r in kept)


def expect_refused(nodes: list[Node], before: dict[str, Counter], expected: Counter) -> None:
    """Each node counted exactly the refusals expected, and still answers a legitimate request."""
    for node in nodes:
        eventually(lambda: _assert_drops(node, before[node.name], expected), timeout=15)
        assert node.call("ping")["node"] == node.name


def _assert_drops(node: Node, before: Counter, expected: Counter) -> None:
    got = drops(before, stats(node))
    assert got == expected, f"{node.name} refused {dict(got)}, expected {dict(expected)}"


def send_all(sock: zmq.Socket, frames: list[bytes], rnd: random.Random) -> None:
    """One message per frame; now and then the frame is split into a two-part message instead."""
    for frame in frames:
        if len(frame) > 2 and rnd.random() < SPLIT_ODDS:
            cut = rnd.randrange(1, len(frame))
            sock.send_multipart([frame[:cut], frame[cut:]])
        else:
            sock.send(frame)


@LIVE
@given(data=st.data())
def test_bus_refuses_every_hostile_frame(local_cluster: LocalCluster, rogue: Rogue, key: bytes,
                                         data: st.DataObject) -> None:
    frames, expected = refused_batch(data, hostile_frames(key, NOT_FOR_THE_BUS), key, wire.BUS_TYPES)
    nodes = local_cluster.nodes
    before = {n.name: stats(n) for n in nodes}
    rogue.publish(frames)
    tally["live daemon bus (frames x daemons)"] += len(frames) * len(nodes)
    expect_refused(nodes, before, expected)


@LIVE
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_peer_socket_refuses_every_hostile_frame(local_cluster: LocalCluster, ctx: zmq.Context, key: bytes,
                                                 data: st.DataObject, seed: int) -> None:
    frames, _ = refused_batch(data, hostile_frames(key, NOT_FOR_THE_PEER_SOCKET), key, wire.PEER_REQUESTS)
    for node in local_cluster.nodes:
        sock = dealer(ctx, node.status()["peer"])
        try:
            before = {node.name: stats(node)}
            send_all(sock, frames, random.Random(seed))
            tally["live daemon peer socket"] += len(frames)
            expect_refused([node], before, _with_splits(frames, key, wire.PEER_REQUESTS, seed))
        finally:
            sock.close(0)


def _with_splits(frames: list[bytes], key: bytes, allowed: frozenset[str], seed: int) -> Counter:
    """Replay send_all's choices: a split message is refused whole, as malformed, whatever its parts hold."""
    rnd, expected = random.Random(seed), Counter()
    for frame in frames:
        if len(frame) > 2 and rnd.random() < SPLIT_ODDS:
            rnd.randrange(1, len(frame))
            expected["malformed"] += 1
        else:
            expected[refusal(key, frame, allowed)] += 1
    return expected


@LIVE
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_ipc_socket_refuses_every_hostile_request(local_cluster: LocalCluster, ctx: zmq.Context, key: bytes,
                                                  data: st.DataObject, seed: int) -> None:
    """Every refused request also gets an error reply, so a client is never left waiting."""
    strategy = hostile_frames(key, ["req", "rep", "hb", "ping"]) | bad_requests(key)
    frames, _ = refused_batch(data, strategy, key, frozenset({"req"}))
    node = local_cluster.nodes[data.draw(st.integers(0, len(local_cluster.nodes) - 1))]
    sock = dealer(ctx, f"ipc://{node.client.ipc_path}")
    try:
        before = {node.name: stats(node)}
        send_all(sock, frames, random.Random(seed))
        tally["live daemon ipc socket"] += len(frames)
        expect_refused([node], before, _with_splits(frames, key, frozenset({"req"}), seed))
        replies = _replies(sock, key, len(frames))
        assert all(not env.payload["ok"] and env.payload["error"].startswith("bad request") for env in replies)
    finally:
        sock.close(0)


def _replies(sock: zmq.Socket, key: bytes, n: int) -> list[wire.Envelope]:
    got: list[wire.Envelope] = []

    def all_there() -> None:
        while sock.poll(0):
            got.append(wire.decode(key, sock.recv()))
        assert len(got) == n, f"{len(got)} of {n} error replies"
    eventually(all_there, timeout=10)
    return got


@pytest.mark.parametrize("where", ["peer", "ipc"])
def test_an_oversized_message_is_cut_off_and_the_daemon_hears_the_sender_again(
        local_cluster: LocalCluster, ctx: zmq.Context, where: str) -> None:
    """libzmq drops a connection that sends more than --max-msg-bytes; the dialler reconnects and is heard."""
    node = local_cluster.nodes[0]
    sock = dealer(ctx, node.status()["peer"] if where == "peer" else f"ipc://{node.client.ipc_path}")
    try:
        before = stats(node)
        sock.send(b"\x00" * (MAX_MSG + 1))
        tally[f"live daemon {where} socket, oversized"] += 1

        def heard_again() -> None:
            sock.send(b"small junk")  # lost while the connection is down: so sent until one arrives
            assert drops(before, stats(node))["truncated"] >= 1
        eventually(heard_again, timeout=15, interval=0.2)
        assert node.call("ping")["node"] == node.name
    finally:
        sock.close(0)


def test_an_oversized_message_on_the_bus_cuts_the_publisher_off(local_cluster: LocalCluster,
                                                                rogue: Rogue) -> None:
    """The subscribing daemon treats it as a protocol error and drops that publisher; it keeps serving."""
    rogue.publish_one(b"\x00" * (MAX_MSG + 1))
    tally["live daemon bus, oversized (frames x daemons)"] += len(local_cluster.nodes)
    local_cluster.wait_ready()  # every daemon answers and still sees its real peers up
    assert_no_crash(local_cluster)


def test_after_the_fuzzing_the_cluster_still_works(local_cluster: LocalCluster, rogue: Rogue) -> None:
    """Peers still up, a new user still replicates, every refusal is visible, nobody crashed."""
    n1, n2 = local_cluster.nodes
    local_cluster.wait_ready()
    n1.call("register", username="after-the-storm", password_hash="scrypt:not-a-real-hash")
    eventually(lambda: n2.call("user", username="after-the-storm") is not None)
    eventually(local_cluster.converged)
    for node in (n1, n2):
        status = node.status()
        refused = {k: v for k, v in status["stats"].items() if k.startswith("drop_")}
        print(f"\n{node.name} refused: {refused}\n{node.name} refused by sender: {status['refused_by_sender']}")
        assert refused.get("drop_bad_signature", 0) > 0
        assert status["stats"].get("internal_errors", 0) == 0
    assert_no_crash(local_cluster)
