"""Figure 1, merge propagation: from daemon A publishing a merge to daemon B having applied it.

Every daemon runs with ``--trace``: A records ``monotonic_ns()`` when it
publishes each new user's merge, every other node when it applies it.  Users
are registered on A through its ipc register path with a precomputed password
hash, at a steady paced rate (requests are pipelined on one DEALER so the
pacing holds whatever a single insert costs), so what is measured is
latency, not queueing.  The baselines (``bench.hops``) send messages of the
size of one real merge frame at the same rate.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timezone

import zmq

from bench.common import FAKE_HASH
from bench.hops import pace
from daemon import wire
from daemon.cache import user_entry
from daemon.testing import LocalCluster, eventually


def merge_frame_size(cookie: bytes = b"c" * 48, name: str = "p1") -> int:
    """Bytes of the bus frame that carries one registered user (what the baselines send)."""
    user = {"id": uuid.uuid4().hex, "username": "prop0000001", "password_hash": FAKE_HASH,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    codec = wire.Codec(cookie, name, wire.new_incarnation())
    return len(codec.encode("merge", {"entries": [user_entry(user)]}))


def paced_register(ipc_path: str, cookie: bytes, names: list[str], rate: float, progress=None) -> int:
    """Send one register request per slot without waiting for replies; return how many succeeded."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 0
    sock.connect(f"ipc://{ipc_path}")
    codec = wire.Codec(cookie, "bench")
    ok = replies = 0

    def drain(timeout_ms: int = 0) -> None:
        nonlocal ok, replies
        while sock.poll(timeout_ms):
            env = codec.decode(sock.recv())
            replies += 1
            ok += bool(env.payload["ok"])
            timeout_ms = 0
    try:
        for i in pace(len(names), rate):
            sock.send(codec.encode("req", {"id": i + 1, "op": "register",
                                           "args": {"username": names[i], "password_hash": FAKE_HASH}}))
            drain()
            if progress is not None and i % 100 == 99:
                progress(100)
        deadline = time.monotonic() + 60
        while replies < len(names) and time.monotonic() < deadline:
            drain(100)
        return ok
    finally:
        sock.close()


def run(nodes: int, n: int, rate: float, progress=None) -> dict:
    """Latencies (µs) from A's publish to each other node's apply, for n users registered on A."""
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60,
                      env={"LOGONMESH_TRACE": "1"}) as cluster:
        members = cluster.start_nodes("p", nodes, web=False)
        a, others = members[0], members[1:]
        for node in members:
            node.call("trace")  # start clean
        tag = uuid.uuid4().hex[:6]
        names = [f"p{tag}{i:06d}" for i in range(n)]
        ok = paced_register(os.path.join(cluster.run_dir, f"{a.name}.ipc"), cluster.cookie.encode(), names,
                            rate, progress)
        eventually(lambda: _all_have(members, ok), timeout=60, interval=0.2)
        published = a.call("trace")["published"]
        samples: list[float] = []
        missing = 0
        for b in others:
            applied = b.call("trace")["applied"]
            for key, t0 in published.items():
                t1 = applied.get(key)
                if t1 is None:
                    missing += 1  # came by repair, not by the bus: not a propagation sample
                else:
                    samples.append((t1 - t0) / 1000)
        return {"nodes": nodes, "registered": ok, "published": len(published), "missing": missing,
                "rate": rate, "samples": samples}


def _all_have(nodes, count: int) -> bool:
    return all(node.status()["cache"]["users"] >= count for node in nodes)
