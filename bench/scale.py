"""Scale of the full mesh: what N daemons cost at rest, and how long they take to find each other.

Every daemon subscribes to every other daemon's PUB and keeps a DEALER to its
ROUTER, so N nodes hold 2·N·(N-1) TCP connections and each node hears N-1
heartbeats per period.  For each N this starts N daemons (no web) with the
production timings (heartbeat 1 s, discovery 2 s unless given), and reports:

* start→mesh: from launching all N processes to every daemon seeing N-1 peers up
  (on 2 cores this is mostly Python start-up contention, reported for context);
* join: one more daemon started into the settled mesh, until all N+1 see it up
  (the mesh's own cost of admitting a node);
* idle CPU per daemon (mean and max) over a quiet window, from /proc/PID/stat;
* established TCP connections per daemon, counted from /proc/net/tcp.

    python -m bench.scale [--sizes 2,4,8,16] [--idle-s 10] [--heartbeat-ms 1000] [--db sqlite|redis]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

from bench.common import RESULTS, machine
from logonmesh.testing import LocalCluster, Node, eventually

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def established_tcp_inodes() -> set[str]:
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "01":  # ESTABLISHED
                        inodes.add(cols[9])
        except FileNotFoundError:
            pass
    return inodes


def tcp_connections(pid: int, established: set[str]) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in established:
            count += 1
    return count


def all_see_all(nodes: list[Node]) -> None:
    names = {n.name for n in nodes}
    for node in nodes:
        seen = set(node.peers_up())
        assert seen == names - {node.name}, f"{node.name} sees {len(seen)} of {len(names) - 1}"


def one_size(n: int, args: argparse.Namespace) -> dict:
    env = {}
    if args.db == "redis":
        env["LOGONMESH_DB"] = f"redis://127.0.0.1:6379/0?prefix=bench-{uuid.uuid4().hex[:8]}"
    with LocalCluster(heartbeat_ms=args.heartbeat_ms, discovery_ms=args.discovery_ms, ready_timeout=300,
                      env=env) as cluster:
        t0 = time.perf_counter()
        nodes = cluster.start_nodes("s", n, web=False, wait=False)
        eventually(lambda: all_see_all(nodes), timeout=300, interval=0.05)
        start_s = time.perf_counter() - t0
        time.sleep(args.settle_s)  # let start-up repairs finish before measuring rest
        pids = [node.daemon.pid for node in nodes]
        before = [cpu_seconds(p) for p in pids]
        load0 = os.getloadavg()[0]
        t1 = time.perf_counter()
        time.sleep(args.idle_s)
        wall = time.perf_counter() - t1
        cpu = [(cpu_seconds(p) - b) / wall * 100 for p, b in zip(pids, before)]
        established = established_tcp_inodes()
        conns = [tcp_connections(p, established) for p in pids]
        t2 = time.perf_counter()
        [extra] = cluster.start_nodes("j", 1, web=False, wait=False)
        eventually(lambda: all_see_all(nodes + [extra]), timeout=300, interval=0.02)
        join_s = time.perf_counter() - t2
    return {"n": n, "start_to_mesh_s": round(start_s, 2), "join_s": round(join_s, 2),
            "idle_cpu_pct_mean": round(sum(cpu) / n, 2), "idle_cpu_pct_max": round(max(cpu), 2),
            "tcp_per_daemon": round(sum(conns) / n, 1), "load_avg_1m": round(load0, 2)}


def report(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Machine: {machine()}; heartbeat {args.heartbeat_ms} ms, discovery {args.discovery_ms} ms, "
             f"registry {args.db}, idle window {args.idle_s} s", "",
             "| daemons N | start→mesh s | join s | idle CPU/daemon mean % | max % | TCP conns/daemon | load 1m |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['start_to_mesh_s']} | {r['join_s']} | {r['idle_cpu_pct_mean']} | "
                     f"{r['idle_cpu_pct_max']} | {r['tcp_per_daemon']} | {r['load_avg_1m']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4,8,16")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument("--discovery-ms", type=int, default=2000)
    parser.add_argument("--db", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--out", default="scale")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        rows.append(one_size(n, args))
        print(json.dumps(rows[-1]), flush=True)
    text = report(rows, args)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump({"machine": machine(), "args": vars(args), "rows": rows}, f, indent=1)
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
