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

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import zmq

from bench.common import FAKE_HASH
from bench.hops import pace
from logonmesh.daemon import wire
from logonmesh.daemon.cache import user_entry
from logonmesh.testing import LocalCluster, eventually


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


def _tap(endpoint: str, out: str, count: int) -> None:
    """A bare SUB on A's bus: when each user's merge frame reaches a process that does nothing with it."""
    import msgpack
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = 0
    sock.subscribe(b"")
    sock.connect(endpoint)
    print("ready", flush=True)
    seen: dict[str, int] = {}
    while len(seen) < count and sock.poll(5000):
        frame = sock.recv()
        now = time.monotonic_ns()
        body = msgpack.unpackb(frame[:-wire.MAC_SIZE], raw=False)
        if body[1] == "merge":
            for entry in body[-1]["entries"]:  # the payload is the last field (after sent_at)
                seen.setdefault(entry[1], now)
    with open(out, "w") as f:
        json.dump(seen, f)
    sock.close()
    ctx.term()


def run(nodes: int, n: int, rate: float, progress=None, env: dict | None = None) -> dict:
    """Latencies (µs) from A's publish to each other node's apply, for n users registered on A.

    Beside them, a bare SUB process on A's bus (the tap) splits each latency
    into A's sending side (publish -> tap) and a receiver's own cost (tap ->
    apply; both sockets get the frame from the same PUB).
    """
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60,
                      env={"LOGONMESH_TRACE": "1", **(env or {})}) as cluster:
        members = cluster.start_nodes("p", nodes, web=False)
        a, others = members[0], members[1:]
        for node in members:
            node.call("trace")  # start clean
        tap_out = os.path.join(cluster.dir, "tap.json")
        tap = subprocess.Popen([sys.executable, "-m", "bench.propagation", "_tap", a.status()["bus"], tap_out,
                                str(n)], stdout=subprocess.PIPE, text=True, start_new_session=True)
        tap.stdout.readline()
        time.sleep(0.3)  # the slow joiner: let its subscription reach A
        tag = uuid.uuid4().hex[:6]
        names = [f"p{tag}{i:06d}" for i in range(n)]
        ok = paced_register(os.path.join(cluster.run_dir, f"{a.name}.ipc"), cluster.cookie.encode(), names,
                            rate, progress)
        eventually(lambda: _all_have(members, ok), timeout=60, interval=0.2)
        try:
            tap.wait(30)
            with open(tap_out) as f:
                tapped = json.load(f)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            tap.kill()
            tapped = {}
        published = a.call("trace")["published"]
        samples: list[float] = []
        receiver: list[float] = []
        missing = 0
        for b in others:
            applied = b.call("trace")["applied"]
            for key, t0 in published.items():
                t1 = applied.get(key)
                if t1 is None:
                    missing += 1  # came by repair, not by the bus: not a propagation sample
                else:
                    samples.append((t1 - t0) / 1000)
                    if key in tapped:
                        receiver.append((t1 - tapped[key]) / 1000)
        sender = [(tapped[key] - t0) / 1000 for key, t0 in published.items() if key in tapped]
        return {"nodes": nodes, "registered": ok, "published": len(published), "missing": missing,
                "rate": rate, "samples": samples, "sender_us": sender, "receiver_us": receiver}


def _all_have(nodes, count: int) -> bool:
    return all(node.status()["cache"]["users"] >= count for node in nodes)


if __name__ == "__main__" and sys.argv[1:2] == ["_tap"]:
    _tap(sys.argv[2], sys.argv[3], int(sys.argv[4]))
