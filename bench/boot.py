"""Figure 4, boot: how long a daemon takes to load N users and answer, and its memory per cached user.

A daemon is started on a database pre-seeded with N users; the clock runs
from just before the process is spawned to the first answer of its ipc
``ping``.  The same is done with 0 users, and beside both, the start of a bare
interpreter that imports the daemon (``python -c "import daemon.node"``),
which no daemon can beat.  Memory per user is (VmRSS with N users - VmRSS
with 0 users) / N, read from /proc once each daemon answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from bench.common import RESULTS, seed_users
from logonmesh.daemon.client import DaemonUnavailable
from logonmesh.testing import LocalCluster


def template(n: int) -> str:
    """A seeded database of n users, made once and kept in bench/results (git-ignored)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f".seed-{n}.db")
    if not os.path.exists(path):
        seed_users(path + ".tmp", n)
        os.replace(path + ".tmp", path)
    return path


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def boot_once(n: int) -> dict:
    """Seconds from spawn to the first ping answer, users loaded and RSS, for one daemon on n users."""
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=120) as cluster:
        if n:
            shutil.copy(template(n), cluster.db)
        else:
            from logonmesh.discovery.sqlite import open_db
            open_db(cluster.db).conn.close()
        t0 = time.perf_counter()
        (node,) = cluster.start_nodes("b", 1, web=False, wait=False)
        deadline = t0 + 120
        while True:
            try:
                node.client.call("ping", timeout_ms=200)
                break
            except DaemonUnavailable:
                if time.perf_counter() > deadline or not node.daemon.alive:
                    raise RuntimeError(f"daemon never answered:\n{node.logs()[-2000:]}")
                time.sleep(0.002)
        ready = time.perf_counter() - t0
        users = node.status()["cache"]["users"]
        time.sleep(0.2)  # let the first timers run, so RSS is the steady one
        return {"n": n, "ready_s": ready, "users": users, "rss_kb": rss_kb(node.daemon.pid)}


def interpreter_start() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import daemon.node"], check=True)
    return time.perf_counter() - t0


def run(n: int, repeat: int, progress=None) -> dict:
    template(n)
    runs: dict[str, list] = {"full": [], "empty": [], "import_s": []}
    for _ in range(repeat):  # interleaved, so noise falls on each alike
        runs["full"].append(boot_once(n))
        runs["empty"].append(boot_once(0))
        runs["import_s"].append(interpreter_start())
        if progress is not None:
            progress(1)
    return {"n": n, **runs}
