"""A user stored by a node that died before publishing it is not lost.

The crash leaves exactly this state: the user's row in the store, marked with
the node that wrote it, and no merge on the bus.  Writing that row by hand and
then killing the node reproduces it without racing a kill -9 against a send.
"""

from __future__ import annotations

import sqlite_utils

from logonmesh.testing import LocalCluster, eventually

ROW = {"id": "ab" * 16, "username": "orphan", "password_hash": "h",
       "created_at": "2026-01-01T00:00:00.000+00:00", "node": "o3"}


def test_users_of_a_node_that_vanished_are_adopted_by_the_others() -> None:
    with LocalCluster() as cluster:
        n1, n2, n3 = cluster.start_nodes("o", 3, web=False)
        sqlite_utils.Database(cluster.db)["users"].insert(ROW)
        n3.kill()
        # a partition is not a death: while o3's row is fresh, nobody reads the store
        eventually(lambda: cluster.assert_sees(n1, [n3], up=False))
        assert n1.call("user", username="orphan") is None
        # once o3's row is pruned (stale for ten down-periods), its users are adopted and published
        eventually(lambda: n1.call("user", username="orphan")["id"] == ROW["id"], timeout=15)
        eventually(lambda: n2.call("user", username="orphan")["id"] == ROW["id"], timeout=5)
        assert eventually(cluster.converged)
