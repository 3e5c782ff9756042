"""Repair heals any difference, costs in proportion to it, and never brings a logout back.

Real daemons, real sockets, one real SQLite file; the partition is the
harness's (each daemon drops the other's messages).
"""

from __future__ import annotations

import itertools

import pytest

from logonmesh.daemon.digest import LEAVES, bucket_of
from logonmesh.testing import LocalCluster, Node, eventually


def names_in_leaves(leaves: int, per_leaf: int = 1, prefix: str = "x") -> list[str]:
    """Usernames chosen so that they fall into exactly `leaves` distinct digest leaves."""
    chosen: dict[int, list[str]] = {}
    for i in itertools.count():
        name = f"{prefix}{i}"
        leaf = bucket_of("u", name)
        if leaf in chosen or len(chosen) < leaves:
            bucket = chosen.setdefault(leaf, [])
            if len(bucket) < per_leaf:
                bucket.append(name)
        if len(chosen) == leaves and all(len(b) == per_leaf for b in chosen.values()):
            return [n for b in chosen.values() for n in b]


def repair_bytes(*nodes: Node) -> int:
    return sum(n.status()["stats"].get("repair_bytes_out", 0) for n in nodes)


def converged(cluster: LocalCluster) -> None:
    assert cluster.converged(), "digests still differ"


@pytest.fixture(scope="module")
def trio(three_daemons: LocalCluster) -> LocalCluster:
    """The shared three daemons (tests/conftest.py)."""
    return three_daemons


@pytest.mark.parametrize("leaves,per_leaf,max_bytes", [(1, 5, 20_000), (64, 2, 200_000),
                                                       (LEAVES, 1, None)],
                         ids=["one-bucket", "many-buckets", "every-bucket"])
def test_divergence_converges(trio: LocalCluster, leaves: int, per_leaf: int, max_bytes: int | None) -> None:
    n1, n2, n3 = trio.nodes
    names = names_in_leaves(leaves, per_leaf, prefix=f"d{leaves}-")
    trio.isolate(n1)
    for name in names:
        n1.call("register", username=name, password_hash="h")
    assert n2.call("user", username=names[0]) is None, "the partition leaked"
    before = repair_bytes(n1, n2, n3)
    trio.heal()
    eventually(lambda: converged(trio), timeout=20)
    for node in (n2, n3):
        assert all(node.call("user", username=n) for n in names)
    if max_bytes is not None:
        moved = repair_bytes(n1, n2, n3) - before
        assert 0 < moved < max_bytes, f"repair moved {moved} bytes for {len(names)} entries"


def test_concurrent_writes_to_one_key_resolve_the_same_everywhere(trio: LocalCluster) -> None:
    n1, n2, n3 = trio.nodes
    n1.call("register", username="both-sides", password_hash="h")
    token = n1.call("session_create", username="both-sides", device="test")["token"]
    eventually(lambda: all(n.call("session_resolve", token=token) for n in trio.nodes))
    trio.partition([n1], [n2, n3])
    n1.call("session_revoke", token=token)
    n2.call("session_revoke", token=token)
    trio.heal()
    eventually(lambda: converged(trio), timeout=10)
    views = [[e for e in n.call("cache", user=None, sessions=True, limit=100_000)["entries"]
              if e["key"] == token[:8] + "…"] for n in trio.nodes]
    assert views[0] == views[1] == views[2]
    assert len(views[0]) == 1 and views[0][0]["tombstone"]


def test_a_node_cut_off_during_a_logout_never_brings_the_session_back(trio: LocalCluster) -> None:
    n1, n2, n3 = trio.nodes
    n1.call("register", username="cut-off", password_hash="h")
    token = n1.call("session_create", username="cut-off", device="test")["token"]
    eventually(lambda: n3.call("session_resolve", token=token) is not None)
    trio.isolate(n3)
    n1.call("session_revoke", token=token)
    eventually(lambda: n2.call("session_resolve", token=token) is None)
    assert n3.call("session_resolve", token=token) is not None, "n3 should not have heard the logout"
    trio.heal()
    eventually(lambda: converged(trio), timeout=10)
    assert all(n.call("session_resolve", token=token) is None for n in trio.nodes)


def test_a_node_down_during_a_logout_never_brings_the_session_back() -> None:
    with LocalCluster() as cluster:
        n1, n2 = cluster.start_nodes("k", 2, web=False)
        n1.call("register", username="down", password_hash="h")
        token = n1.call("session_create", username="down", device="test")["token"]
        eventually(lambda: n2.call("session_resolve", token=token) is not None)
        n2.pause()
        n1.call("session_revoke", token=token)
        n2.resume()
        eventually(lambda: converged(cluster), timeout=10)
        assert n1.call("session_resolve", token=token) is None
        assert n2.call("session_resolve", token=token) is None


def test_status_counts_repairs(trio: LocalCluster) -> None:
    stats = trio.nodes[0].status()["stats"]
    for key in ("repairs_started", "repairs_done", "repair_bytes_in", "repair_bytes_out",
                "repair_entries_in", "repair_entries_out"):
        assert stats.get(key, 0) > 0, key
