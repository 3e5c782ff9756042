"""Heal cost: what a repair moves after a partition, beside a full snapshot of the same state.

For each N (users both nodes booted with) and k (users registered on one side
of a partition), two real daemons share a pre-seeded database; node 1 is
isolated, k users are registered on it, and the partition heals.  We report
the repair's bytes and messages (both directions, from the daemons' own
counters), the time from heal to "peers up" and from "peers up" to "digests
equal", and beside them the bytes and time of one full snapshot of node 1,
fetched over its peer socket in the same run.

    python -m bench.heal [--sizes 10000,100000,1000000] [--diffs 10,1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from bench.common import RESULTS, machine, median, seed_users, snapshot
from logonmesh.testing import LocalCluster, eventually

REPAIR_KEYS = ("repair_bytes_in", "repair_bytes_out", "repair_msgs_in", "repair_msgs_out")


def repair_counters(nodes) -> dict[str, int]:
    totals = dict.fromkeys(REPAIR_KEYS, 0)
    for node in nodes:
        stats = node.status()["stats"]
        for key in REPAIR_KEYS:
            totals[key] += stats.get(key, 0)
    return totals


def one_heal(template: str, n: int, k: int) -> dict:
    with LocalCluster(heartbeat_ms=100, ready_timeout=300) as cluster:
        shutil.copy(template, cluster.db)
        n1, n2 = cluster.start_nodes("h", 2, web=False)
        eventually(lambda: _assert(cluster.converged()), timeout=60)
        cluster.isolate(n1)
        for i in range(k):
            n1.call("register", username=f"new{i:05d}", password_hash="x")
        before = repair_counters([n1, n2])
        t0 = time.perf_counter()
        cluster.heal()
        eventually(lambda: cluster.assert_sees(n2, [n1]), timeout=30, interval=0.002)
        t_up = time.perf_counter()
        eventually(lambda: _assert(cluster.converged()), timeout=60, interval=0.002)
        t_equal = time.perf_counter()
        after = repair_counters([n1, n2])
        snap_bytes, snap_s = snapshot(n1.status()["peer"], cluster.cookie.encode())
        moved = {key: after[key] - before[key] for key in REPAIR_KEYS}
        return {"n": n, "k": k, "up_s": t_up - t0, "heal_s": t_equal - t_up,
                "bytes": moved["repair_bytes_in"] // 2 + moved["repair_bytes_out"] // 2,
                "msgs": (moved["repair_msgs_in"] + moved["repair_msgs_out"]) // 2,
                "snapshot_bytes": snap_bytes, "snapshot_s": snap_s}


def _assert(ok: bool) -> None:
    assert ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--diffs", default="10,1000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    rows, raw = [], []
    for n in map(int, args.sizes.split(",")):
        template = os.path.join(RESULTS, f".seed-{n}.db")
        if not os.path.exists(template):
            seed_users(template, n)
        for k in map(int, args.diffs.split(",")):
            runs = [one_heal(template, n, k) for _ in range(args.repeat)]
            raw += runs
            row = {key: median([r[key] for r in runs]) for key in runs[0]}
            rows.append(row)
            print(_line(row), flush=True)
    table = _table(rows)
    print(table)
    with open(os.path.join(RESULTS, "heal.md"), "w") as f:
        f.write(f"Machine: {machine()}\n\n{table}\n")
    with open(os.path.join(RESULTS, "heal.json"), "w") as f:
        json.dump({"machine": machine(), "runs": raw}, f, indent=1)


def _line(r: dict) -> str:
    return f"N={r['n']:>8} k={r['k']:>5}: {r['bytes']:>9.0f} B in {r['msgs']:.0f} msgs, up {r['up_s']*1000:.0f} ms, " \
           f"equal {r['heal_s']*1000:.0f} ms; snapshot {r['snapshot_bytes']:.0f} B in {r['snapshot_s']*1000:.0f} ms"


def _table(rows: list[dict]) -> str:
    out = ["| users N | differ k | repair bytes | msgs | % of snapshot | heal→up ms | up→equal ms "
           "| snapshot bytes | snapshot ms |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = 100 * r["bytes"] / r["snapshot_bytes"]
        out.append(f"| {r['n']:,} | {r['k']:,} | {r['bytes']:,.0f} | {r['msgs']:.0f} | {share:.2f}% "
                   f"| {r['up_s']*1000:.0f} | {r['heal_s']*1000:.0f} | {r['snapshot_bytes']:,.0f} "
                   f"| {r['snapshot_s']*1000:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
