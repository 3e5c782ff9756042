"""Figure 3, registration throughput: sign-ups per second across a two-node cluster.

Clients call the daemons' ipc register path with a precomputed password hash
(two client threads per node, each waiting for its answer), for a fixed
time; the figure counts the sign-ups that succeeded and checks that every
node has them all.  The baseline is the one durable write a sign-up costs: the
same insert into the same kind of database (WAL, one transaction per user),
from two processes (as two daemons write) with nothing else around it.  Password hashing (werkzeug's
default, scrypt) is reported on its own: it is slow on purpose and runs in the
web process, not in the daemon.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

from bench.common import FAKE_HASH
from logonmesh.daemon.client import DaemonError
from logonmesh.testing import LocalCluster, eventually

CLIENTS_PER_NODE = 2


def cluster_rate(seconds: float, progress=None) -> dict:
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60) as cluster:
        nodes = cluster.start_nodes("r", 2, web=False)
        counts: list[int] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop = time.perf_counter() + seconds

        def client(node, tag: str) -> None:
            done = 0
            while time.perf_counter() < stop:
                try:
                    node.client.call("register", timeout_ms=5000, username=f"{tag}{done:07d}",
                                     password_hash=FAKE_HASH)
                    done += 1
                except DaemonError as exc:
                    with lock:
                        errors.append(str(exc))
            with lock:
                counts.append(done)
        threads = [threading.Thread(target=client, args=(node, f"r{uuid.uuid4().hex[:6]}"))
                   for node in nodes for _ in range(CLIENTS_PER_NODE)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        total = sum(counts)
        t1 = time.perf_counter()
        eventually(lambda: all(n.status()["cache"]["users"] == total for n in nodes), timeout=60, interval=0.05)
        if progress is not None:
            progress(1)
        return {"signups": total, "seconds": elapsed, "rate": total / elapsed, "errors": len(errors),
                "clients": len(threads), "all_nodes_have_all_s": time.perf_counter() - t1}


def _insert_for(path: str, tag: str, seconds: float) -> int:
    from logonmesh.discovery.sqlite import SqliteStore, with_retry
    store = SqliteStore(path)
    try:
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            row = {"id": uuid.uuid4().hex, "username": f"{tag}{n:07d}", "password_hash": FAKE_HASH,
                   "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            # the daemon's busy timeout (750 ms) answers a sign-up before the web gives up; a bare
            # writer has nobody waiting, so it retries while the other writer holds the lock
            with_retry(lambda: store.insert(row, f"bench{tag}"))  # named like a daemon's node
            n += 1
        return n
    finally:
        store.close()


def insert_rate(seconds: float, writers: int = 2) -> dict:
    """The baseline: bare inserts of the same rows through the same store class into one shared file,
    from as many processes as the cluster has writers (one worker thread per daemon)."""
    import multiprocessing
    from logonmesh.discovery.sqlite import open_db
    tmp = tempfile.mkdtemp(prefix="lm-ins-")
    path = os.path.join(tmp, "cluster.db")
    open_db(path).conn.close()
    try:
        with multiprocessing.get_context("spawn").Pool(writers) as pool:
            t0 = time.perf_counter()
            counts = pool.starmap(_insert_for, [(path, f"w{i}x", seconds) for i in range(writers)])
            elapsed = time.perf_counter() - t0
        return {"inserts": sum(counts), "writers": writers, "seconds": elapsed, "rate": sum(counts) / seconds}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hash_rate(seconds: float) -> dict:
    from werkzeug.security import generate_password_hash
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        generate_password_hash("correct horse battery staple")
        n += 1
    elapsed = time.perf_counter() - t0
    return {"hashes": n, "seconds": elapsed, "rate": n / elapsed, "ms_each": 1000 * elapsed / n,
            "method": generate_password_hash("x").split("$", 1)[0]}
