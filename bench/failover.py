"""Figure 5, the parts ``bench.scale`` does not cover: a join until it has converged, and failure detection.

For N running daemons (production timings: heartbeat 1 s, down after 3
beats) holding state that lives only in memory (sessions, so a newcomer cannot
read it from the database and must get it by repair):

* join→converged: from spawning one more daemon to every node seeing it up and
  its cache digest equal to everyone's;
* kill -9 → detected: one daemon is killed with SIGKILL, and the clock runs
  until every survivor reports it down; beside it, the configured timeout
  (heartbeat × down-after), which is what detection should take at most
  plus one liveness tick.
"""

from __future__ import annotations

import time

from logonmesh.testing import LocalCluster, Node, eventually

SESSIONS = 1000
HEARTBEAT_MS, DOWN_AFTER = 1000, 3


def all_see_all(nodes: list[Node]) -> None:
    names = {n.name for n in nodes}
    for node in nodes:
        assert set(node.peers_up()) == names - {node.name}, f"{node.name} does not see everyone yet"


def one_size(n: int) -> dict:
    with LocalCluster(heartbeat_ms=HEARTBEAT_MS, down_after=DOWN_AFTER, discovery_ms=2000,
                      ready_timeout=300) as cluster:
        nodes = cluster.start_nodes("f", n, web=False, wait=False)
        eventually(lambda: all_see_all(nodes), timeout=300, interval=0.05)
        first = nodes[0]
        first.call("register", username="alice", password_hash="x")
        for _ in range(SESSIONS):
            first.call("session_create", username="alice", device="test")
        eventually(lambda: len({node.status()["digest"] for node in nodes}) == 1, timeout=60, interval=0.05)

        t0 = time.perf_counter()
        [extra] = cluster.start_nodes("j", 1, web=False, wait=False)
        everyone = nodes + [extra]
        eventually(lambda: all_see_all(everyone), timeout=300, interval=0.01)
        seen_s = time.perf_counter() - t0
        eventually(lambda: len({node.status()["digest"] for node in everyone}) == 1, timeout=300, interval=0.01)
        converged_s = time.perf_counter() - t0
        sessions = extra.status()["cache"]["sessions"]

        victim = nodes[-1]
        survivors = [node for node in everyone if node is not victim]
        t1 = time.perf_counter()
        victim.kill()
        eventually(lambda: all(victim.name not in node.peers_up() for node in survivors), timeout=60,
                   interval=0.01)
        detect_s = time.perf_counter() - t1
    return {"n": n, "join_seen_s": seen_s, "join_converged_s": converged_s, "newcomer_sessions": sessions,
            "detect_s": detect_s, "timeout_s": HEARTBEAT_MS * DOWN_AFTER / 1000}
