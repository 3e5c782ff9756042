"""The benchmark suite of issue 8: every figure beside a baseline measured in the same run.

    python -m bench [--quick] [--no-1m] [--no-profile] [--only 1,2,...]
    bench/run [same options]

Starts real clusters (``logonmesh.testing.LocalCluster``), shows a progress bar,
prints a markdown table and writes it to bench/results/latest.md, the raw
samples to bench/results/latest.json and the propagation latency CDF to
bench/results/propagation_cdf.png.  ``--quick`` is a smoke run of under a
minute with small counts: its figures say nothing about speed.  A missed
target says MISSED in the table; a figure that failed to run says FAILED, and
the exit code is 1.  The machine is shared and has 2 cores: read ratios to the
baselines, not absolute figures, and compare runs by their medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from datetime import datetime, timezone

from bench.common import RESULTS, machine, median, pct

QUICK = dict(prop_n=200, prop_rate=500, prop_nodes=(2,), prop_repeat=1,
             page_repeat=1, page_s=1, reg_s=2, hash_s=1, boot_n=10_000, boot_repeat=1,
             scale_sizes=(2,), scale_idle_s=1, scale_settle_s=0.2, fail_heartbeat_ms=200, fail_sessions=100,
             heal_sizes=(10_000,), heal_diffs=(10,), heal_repeat=1, sess_rounds=3, sess_calls=50, sess_writes=30,
             persist_rounds=1, persist_calls=100, persist_logins=5, persist_prop_n=200, profile=False)
FULL = dict(prop_n=5000, prop_rate=500, prop_nodes=(2, 8), prop_repeat=3,
            page_repeat=3, page_s=10, reg_s=10, hash_s=5, boot_n=100_000, boot_repeat=3,
            scale_sizes=(2, 4, 8, 16), scale_idle_s=5, scale_settle_s=3, fail_heartbeat_ms=1000, fail_sessions=1000,
            heal_sizes=(10_000, 100_000, 1_000_000), heal_diffs=(10, 1000), heal_repeat=3,
            sess_rounds=20, sess_calls=300, sess_writes=300,
            persist_rounds=3, persist_calls=2000, persist_logins=30, persist_prop_n=3000, profile=True)


def ok(cond: bool) -> str:
    return "met" if cond else "**MISSED**"


def us(x: float) -> str:
    return f"{x:,.0f} µs"


# ---- figure 1 ---------------------------------------------------------------------------

def fig_propagation(cfg: dict, tick) -> dict:
    from bench.hops import hop, redis_reachable
    from bench.propagation import merge_frame_size, run
    size = merge_frame_size()
    n, rate = cfg["prop_n"], cfg["prop_rate"]
    redis_why = redis_reachable()
    series: dict[str, list[float]] = {}
    split: dict[str, dict[str, list[float]]] = {}
    runs: list[dict] = []
    fanout = max(cfg["prop_nodes"]) - 1
    for _ in range(cfg["prop_repeat"]):  # interleaved: each repetition measures every series once
        series.setdefault("pyzmq", []).extend(hop("zmq", n, size, rate))
        tick()
        if fanout > 1:
            series.setdefault(f"pyzmq fan-out ×{fanout}", []).extend(hop("zmq", n, size, rate, fanout))
            tick()
        if redis_why is None:
            series.setdefault("redis", []).extend(hop("redis", n, size, rate))
            tick()
        for nodes in cfg["prop_nodes"]:
            r = run(nodes, n, rate)
            runs.append({k: v for k, v in r.items() if not k.endswith(("samples", "_us"))})
            series.setdefault(f"logonmesh {nodes} nodes", []).extend(r["samples"])
            split.setdefault(f"logonmesh {nodes} nodes", {"sender_us": [], "receiver_us": []})
            for k in ("sender_us", "receiver_us"):
                split[f"logonmesh {nodes} nodes"][k].extend(r[k])
            tick()
    return {"frame_bytes": size, "n": n, "rate": rate, "redis_skipped": redis_why, "runs": runs,
            "samples_us": series, "split_us": split}


def rows_propagation(f: dict) -> list[list[str]]:
    s = f["samples_us"]
    z50, z99 = pct(s["pyzmq"], 50), pct(s["pyzmq"], 99)
    redis = s.get("redis")
    rows = []
    base = f"pyzmq PUB→SUB tcp: p50 {us(z50)}, p90 {us(pct(s['pyzmq'], 90))}, p99 {us(z99)}"
    if redis:
        base += f"; Redis pub/sub: p50 {us(pct(redis, 50))}, p99 {us(pct(redis, 99))}"
    else:
        base += f"; Redis: skipped ({f['redis_skipped']})"
    for name in [k for k in s if k.startswith("logonmesh")]:
        x = s[name]
        p50, p90, p99 = pct(x, 50), pct(x, 90), pct(x, 99)
        targets = f"p50 ≤ 2× pyzmq: {ok(p50 <= 2 * z50)}; p99 ≤ 3× pyzmq: {ok(p99 <= 3 * z99)}"
        if redis:
            targets += f"; p50 < Redis: {ok(p50 < pct(redis, 50))}"
        ratio = f"p50 {p50 / z50:.2f}×, p99 {p99 / z99:.2f}× pyzmq"
        fan = next((k for k in s if k.startswith("pyzmq fan-out")), None)
        if fan and name != "logonmesh 2 nodes":
            ratio += f"; {p50 / pct(s[fan], 50):.2f}× / {p99 / pct(s[fan], 99):.2f}× {fan}" \
                     f" (p50 {us(pct(s[fan], 50))}, p99 {us(pct(s[fan], 99))})"
        parts = f.get("split_us", {}).get(name)
        mine = f"p50 {us(p50)}, p90 {us(p90)}, p99 {us(p99)}"
        if parts and parts["sender_us"] and parts["receiver_us"]:
            mine += (f" (A publish → a bare SUB on A's bus: p50 {us(pct(parts['sender_us'], 50))}; "
                     f"that SUB → B applied: p50 {us(pct(parts['receiver_us'], 50))})")
        rows.append([f"1. Merge propagation, {name[10:]} ({len(x):,} samples, {f['n']:,} sign-ups at "
                     f"{f['rate']:.0f}/s, {f['frame_bytes']} B frames)", mine, base, ratio, targets])
    return rows


# ---- figure 2 ---------------------------------------------------------------------------

def fig_pages(cfg: dict, tick) -> dict:
    from bench.hops import redis_reachable
    from bench.pages import run
    return run(cfg["page_repeat"], cfg["page_s"], redis_reachable() is None, progress=lambda k: tick())


def rows_pages(f: dict) -> list[list[str]]:
    runs = f["runs"]
    rps = {k: median([r["rps"] for r in v]) for k, v in runs.items()}
    p99 = {k: median([r["p99_ms"] for r in v if r["p99_ms"] is not None] or [float("nan")])
           for k, v in runs.items()}
    # ratios per repetition (the runs are interleaved), then their median
    def ratio(a: str, b: str) -> float:
        return median([x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b])])
    gen = f["generator"] + ("" if f["generator"] == "wrk" else " (wrk missing: Python keep-alive fallback)")
    base = f"hello {rps['hello']:,.0f} req/s (p99 {p99['hello']:.1f} ms)"
    targets = f"≥ 85% of hello: {ok(ratio('logonmesh', 'hello') >= 0.85)}"
    rel = f"{100 * ratio('logonmesh', 'hello'):.0f}% of hello"
    if "redis" in runs:
        base += f"; Redis-session page {rps['redis']:,.0f} req/s (p99 {p99['redis']:.1f} ms)"
        targets += f"; ≥ 1.3× Redis: {ok(ratio('logonmesh', 'redis') >= 1.3)}"
        rel += f"; {ratio('logonmesh', 'redis'):.2f}× Redis"
    else:
        base += "; Redis: skipped (unreachable)"
    rows = [[f"2. GET /budget, logged in ({gen}, {f['connections']} conns, "
             f"{len(runs['hello'])}×{f['seconds']} s)",
             f"{rps['logonmesh']:,.0f} req/s, p99 {p99['logonmesh']:.1f} ms", base, rel, targets]]
    if "fixed_cookie" in runs:
        rows.append(["2b. same, a client that never stores the refreshed cookie (every response re-signs it)",
                     f"{rps['fixed_cookie']:,.0f} req/s, p99 {p99['fixed_cookie']:.1f} ms", "as above",
                     f"{100 * ratio('fixed_cookie', 'hello'):.0f}% of hello"
                     + (f"; {ratio('fixed_cookie', 'redis'):.2f}× Redis" if "redis" in runs else ""), "—"])
    rows.append(["2c. same page, one daemon round trip per request instead of the mirror",
                 f"{rps['roundtrip']:,.0f} req/s, p99 {p99['roundtrip']:.1f} ms", "as above",
                 f"{100 * ratio('roundtrip', 'hello'):.0f}% of hello; mirror is "
                 f"{ratio('logonmesh', 'roundtrip'):.2f}× this", "—"])
    return rows


# ---- figure 3 ---------------------------------------------------------------------------

def fig_register(cfg: dict, tick) -> dict:
    from bench.register import cluster_rate, hash_rate, insert_rate
    reps = 1 if cfg["reg_s"] < 5 else 3
    out: dict = {"cluster": [], "insert": [], "hash": hash_rate(cfg["hash_s"])}
    for _ in range(reps):
        out["cluster"].append(cluster_rate(cfg["reg_s"]))
        out["insert"].append(insert_rate(min(cfg["reg_s"], 5)))
        tick()
    return out


def rows_register(f: dict) -> list[list[str]]:
    rate = median([r["rate"] for r in f["cluster"]])
    ins = median([r["rate"] for r in f["insert"]])
    h = f["hash"]
    c = f["cluster"][0]
    return [[f"3. Sign-ups, ipc register path, 2 nodes, {c['clients']} clients ({len(f['cluster'])} runs)",
             f"{rate:,.0f} sign-ups/s",
             f"bare insert of the same row, {f['insert'][0]['writers']} processes: {ins:,.0f} /s",
             f"{rate / ins:.2f}× bare insert", "— (no target)"],
            ["3b. Password hashing (werkzeug default), separately", f"{h['rate']:.1f} hashes/s on one core "
             f"({h['ms_each']:.0f} ms each, {h['method']})", "—", "—", "slow on purpose"]]


# ---- figure 4 ---------------------------------------------------------------------------

def fig_boot(cfg: dict, tick) -> dict:
    from bench.boot import run
    return run(cfg["boot_n"], cfg["boot_repeat"], progress=lambda k: tick())


def rows_boot(f: dict) -> list[list[str]]:
    n = f["n"]
    full = median([r["ready_s"] for r in f["full"]])
    empty = median([r["ready_s"] for r in f["empty"]])
    imp = median(f["import_s"])
    rss_full = median([r["rss_kb"] for r in f["full"]])
    rss_empty = median([r["rss_kb"] for r in f["empty"]])
    per_user = (rss_full - rss_empty) * 1024 / n
    return [[f"4. Boot with {n:,} users, spawn → ipc ping answers ({len(f['full'])} runs)",
             f"{full:.2f} s ({full - imp:.2f} s beyond the interpreter + import)",
             f"0 users: {empty:.2f} s; `python -c 'import daemon.node'`: {imp:.2f} s",
             f"loading the users costs {full - empty:.2f} s",
             f"< 1 s (beyond import): {ok(full - imp < 1.0)}"],
            [f"4b. Resident memory per cached user ({n:,} users)", f"{per_user:,.0f} B/user",
             f"RSS {rss_full / 1024:,.1f} MiB with, {rss_empty / 1024:,.1f} MiB without", "—",
             f"≤ 600 B: {ok(per_user <= 600)}"]]


# ---- figure 5 ---------------------------------------------------------------------------

def fig_scale(cfg: dict, tick) -> dict:
    from bench import failover, scale
    args = Namespace(heartbeat_ms=1000, discovery_ms=2000, db="sqlite", idle_s=cfg["scale_idle_s"],
                     settle_s=cfg["scale_settle_s"])
    failover.HEARTBEAT_MS = cfg["fail_heartbeat_ms"]
    failover.SESSIONS = cfg["fail_sessions"]
    rows = []
    for n in cfg["scale_sizes"]:
        rows.append({"scale": scale.one_size(n, args), "failover": failover.one_size(n)})
        tick()
    return {"heartbeat_ms": 1000, "fail_heartbeat_ms": cfg["fail_heartbeat_ms"],
            "down_after": failover.DOWN_AFTER, "sizes": rows}


def rows_scale(f: dict) -> list[list[str]]:
    out = []
    for r in f["sizes"]:
        s, fo = r["scale"], r["failover"]
        out.append([f"5. {s['n']} nodes (+1 joining)",
                    f"idle CPU/daemon {s['idle_cpu_pct_mean']:.2f}% (max {s['idle_cpu_pct_max']:.2f}%); "
                    f"join: seen {fo['join_seen_s']:.2f} s, converged {fo['join_converged_s']:.2f} s "
                    f"({fo['newcomer_sessions']} sessions by repair); kill -9 detected in {fo['detect_s']:.2f} s",
                    f"configured timeout {fo['timeout_s']:.1f} s (heartbeat × down-after)",
                    f"detection {fo['detect_s'] / fo['timeout_s']:.2f}× timeout", "—"])
    return out


# ---- figure 6 ---------------------------------------------------------------------------

def fig_heal(cfg: dict, tick) -> dict:
    from bench.boot import template
    from bench.heal import one_heal
    out = []
    for n in cfg["heal_sizes"]:
        path = template(n)
        for k in cfg["heal_diffs"]:
            reps = 1 if n >= 1_000_000 else cfg["heal_repeat"]
            out.append({"n": n, "k": k, "runs": [one_heal(path, n, k) for _ in range(reps)]})
            tick()
    return {"cases": out}


def rows_heal(f: dict) -> list[list[str]]:
    out = []
    for case in f["cases"]:
        runs = case["runs"]
        m = {key: median([r[key] for r in runs]) for key in runs[0]}
        out.append([f"6. Heal, {case['n']:,} users, {case['k']:,} differ ({len(runs)} runs)",
                    f"{m['bytes']:,.0f} B in {m['msgs']:.0f} msgs, equal {m['heal_s'] * 1000:.0f} ms after up",
                    f"full snapshot {m['snapshot_bytes']:,.0f} B in {m['snapshot_s'] * 1000:.0f} ms",
                    f"{100 * m['bytes'] / m['snapshot_bytes']:.2f}% of the snapshot", "—"])
    return out


# ---- figure 7 ---------------------------------------------------------------------------

def fig_sessions(cfg: dict, tick) -> dict:
    from bench.hops import redis_reachable
    from bench.sessions import run
    redis_why = redis_reachable()
    out = run(cfg["sess_rounds"], cfg["sess_calls"], cfg["sess_writes"], redis_why is None, tick)
    out["redis_skipped"] = redis_why
    return out


def rows_sessions(f: dict) -> list[list[str]]:
    r, p = f["read"], f["propagation"]
    s = {name: median(x) for name, x in r["samples_us"].items()}
    size = r["cookie_bytes"]
    n = len(r["samples_us"]["mesh"])
    base = f"Flask's signed cookie (SecureCookieSessionInterface): {s['cookie']:.1f} µs ({size['cookie']} B cookie)"
    ratio = f"{s['mesh'] / s['cookie']:.2f}× cookie"
    if "redis" in s:
        base += f"; Redis GET + pickle.loads (Flask-Session way): {s['redis']:.1f} µs"
        ratio += f"; {s['mesh'] / s['redis']:.2f}× Redis"
    else:
        base += f"; Redis: skipped ({f['redis_skipped']})"
    lag = f" (mirror not current after {r['mirror_not_current_after_rounds']} of {r['rounds']} rounds)" \
        if r["mirror_not_current_after_rounds"] else ""
    rows = [[f"7. Read flask.session per request, in process: open_session + one value "
             f"({n:,} reads, {r['rounds']} interleaved rounds, median)",
             f"{s['mesh']:.1f} µs (mirror current; {size['mesh']} B cookie){lag}", base, ratio, "—"],
            ["7b. same, mirror not current (one session_data_get round trip per read)",
             f"{s['roundtrip']:.1f} µs", "as above",
             f"{s['roundtrip'] / s['cookie']:.2f}× cookie; the mirror is {s['roundtrip'] / s['mesh']:.1f}× "
             f"faster ({s['roundtrip'] - s['mesh']:.0f} µs saved per read)", "—"]]
    cross, local = p["cross_ms"], p["local_ms"]
    missed = p["missed"]["cross_ms"] + p["missed"]["local_ms"]
    first = sum(1 for k in p["cross_reads"] if k == 1) / len(p["cross_reads"])
    rows.append([f"7c. Session write on node 1 → first read on node 2 that shows it, HTTP, 2 nodes "
                 f"({len(cross)} writes" + (f", {missed} not read within 5 s" if missed else "") + ")",
                 f"p50 {pct(cross, 50):.2f} ms, p99 {pct(cross, 99):.2f} ms "
                 f"({100 * first:.0f}% seen by the first read on node 2)",
                 f"write → read on node 1 alone: p50 {pct(local, 50):.2f} ms, p99 {pct(local, 99):.2f} ms",
                 f"p50 {pct(cross, 50) / pct(local, 50):.2f}×, p99 {pct(cross, 99) / pct(local, 99):.2f}× one node "
                 f"(+{pct(cross, 50) - pct(local, 50):.2f} ms at p50)", "—"])
    return rows


# ---- figure 8 ---------------------------------------------------------------------------

def fig_persist(cfg: dict, tick) -> dict:
    from bench.persist import run, summary
    raw = run(cfg["persist_rounds"], cfg["persist_calls"], cfg["persist_logins"], cfg["persist_prop_n"],
              cfg["prop_rate"], tick)
    return {"summary": summary(raw), "rounds": cfg["persist_rounds"], "calls": len(raw["persisted"]["ipc_us"]),
            "logins": len(raw["persisted"]["web_ms"]), "prop_n": cfg["persist_prop_n"]}


def rows_persist(f: dict) -> list[list[str]]:
    on, off = f["summary"]["persisted"], f["summary"]["ephemeral"]
    batching = f"{on['sessions_saved']:,} entries saved in {on['batches']:,} batches"
    return [
        [f"8. Login, daemon part: session_create over ipc, sessions persisted ({f['calls']:,} calls, "
         f"{f['rounds']} interleaved rounds; {batching})",
         f"p50 {us(on['session_create_p50_us'])}, p99 {us(on['session_create_p99_us'])}",
         f"ephemeral (--ephemeral-sessions): p50 {us(off['session_create_p50_us'])}, "
         f"p99 {us(off['session_create_p99_us'])}",
         f"p50 {on['session_create_p50_us'] / off['session_create_p50_us']:.2f}×", "—"],
        [f"8b. Login over HTTP (POST /, password check included; {f['logins']} logins)",
         f"p50 {on['web_login_p50_ms']:.1f} ms, p99 {on['web_login_p99_ms']:.1f} ms",
         f"ephemeral: p50 {off['web_login_p50_ms']:.1f} ms, p99 {off['web_login_p99_ms']:.1f} ms",
         f"p50 {on['web_login_p50_ms'] / off['web_login_p50_ms']:.2f}×", "—"],
        [f"8c. Figure 1's propagation p50, 2 nodes ({f['prop_n']:,} sign-ups per run, median of the runs' p50)",
         us(on["propagation_p50_us"]), f"ephemeral: {us(off['propagation_p50_us'])}",
         f"{on['propagation_p50_us'] / off['propagation_p50_us']:.2f}×", "—"],
    ]


# ---- profiles -----------------------------------------------------------------------------

def fig_profiles(cfg: dict, tick) -> dict:
    from bench import profile
    from bench.boot import template
    out = {"boot": profile.boot_profile(cfg["boot_n"], template(cfg["boot_n"]))}
    tick()
    if not profile.spy_available():
        out["page"] = out["propagation_publisher"] = out["propagation_receiver"] = "(py-spy not installed)"
        return out
    out.update(_profile_page(profile))
    tick()
    out.update(_profile_propagation(profile, cfg))
    tick()
    return out


def _profile_page(profile) -> dict:
    from bench import pages
    from logonmesh.testing import Browser, LocalCluster
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60) as cluster:
        node, _ = cluster.start_nodes("w", 2, web=True)
        browser = Browser(node.url)
        browser.signup("benchpage", "correct horse battery")
        browser.login("benchpage", "correct horse battery")
        cookie = f"logonmesh={browser.session.cookies.get('logonmesh')}"
        pages.drive(f"{node.url}/budget", cookie, 1, jar=True)
        path = os.path.join(tempfile.mkdtemp(prefix="lm-spy-"), "page.folded")
        spy = profile.spy(node.web.pid, 8, path)
        time.sleep(0.5)
        pages.drive(f"{node.url}/budget", cookie, 7, jar=True)
        spy.wait(30)
        return {"page": profile.top(path, 25)}


def _profile_propagation(profile, cfg: dict) -> dict:
    from bench.propagation import paced_register
    from logonmesh.testing import LocalCluster
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60) as cluster:
        a, b = cluster.start_nodes("p", 2, web=False)
        tmp = tempfile.mkdtemp(prefix="lm-spy-")
        pa, pb = os.path.join(tmp, "a.folded"), os.path.join(tmp, "b.folded")
        spies = [profile.spy(a.daemon.pid, 8, pa), profile.spy(b.daemon.pid, 8, pb)]
        time.sleep(0.5)
        paced_register(os.path.join(cluster.run_dir, f"{a.name}.ipc"), cluster.cookie.encode(),
                       [f"prof{i:06d}" for i in range(int(cfg["prop_rate"] * 7))], cfg["prop_rate"])
        for s in spies:
            s.wait(30)
        return {"propagation_publisher": profile.top(pa, 20), "propagation_receiver": profile.top(pb, 20)}


# ---- the run ------------------------------------------------------------------------------

FIGURES = [
    ("1", "merge propagation", fig_propagation, rows_propagation,
     lambda c: c["prop_repeat"] * (2 + (max(c["prop_nodes"]) > 2) + len(c["prop_nodes"]))),
    ("2", "page throughput", fig_pages, rows_pages, lambda c: c["page_repeat"] * 5),
    ("3", "registration", fig_register, rows_register, lambda c: 1 if c["reg_s"] < 5 else 3),
    ("4", "boot", fig_boot, rows_boot, lambda c: c["boot_repeat"]),
    ("5", "scale", fig_scale, rows_scale, lambda c: len(c["scale_sizes"])),
    ("6", "heal cost", fig_heal, rows_heal, lambda c: len(c["heal_sizes"]) * len(c["heal_diffs"])),
    ("7", "server-side session", fig_sessions, rows_sessions,
     lambda c: c["sess_rounds"] + c["sess_writes"] // 100 + 1),
    ("8", "sessions written behind", fig_persist, rows_persist, lambda c: 2 * c["persist_rounds"]),
    ("p", "profiles", fig_profiles, None, lambda c: 3 if c["profile"] else 0),
]


def others_running() -> list[str]:
    """Other test or benchmark processes on the machine (the noise worth stating)."""
    me = os.getpid()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(pid) != me and ("pytest" in cmd or "-m bench" in cmd) and "bench.apps" not in cmd:
            found.append(cmd[:80])
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run in under a minute (small counts)")
    ap.add_argument("--no-1m", action="store_true", help="skip the 1M-user heal case (it takes minutes)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy / pyinstrument pass")
    ap.add_argument("--only", default="", help="comma-separated figures to run, e.g. 1,2 (default: all)")
    ap.add_argument("--out", default=RESULTS, help="directory for latest.md, latest.json and the CDF")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.no_1m:
        cfg["heal_sizes"] = tuple(n for n in cfg["heal_sizes"] if n < 1_000_000)
    if args.no_profile:
        cfg["profile"] = False
    only = set(filter(None, args.only.split(",")))
    chosen = [f for f in FIGURES if (not only or f[0] in only) and f[4](cfg) > 0]
    os.makedirs(args.out, exist_ok=True)

    from tqdm import tqdm
    started = time.time()
    meta = {"machine": machine(), "kernel": platform.release(), "mode": "quick" if args.quick else "full",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": cfg,
            "load_before": os.getloadavg(), "others_running_before": others_running(),
            "wrk": _version(["wrk", "-v"]), "command": " ".join(["python -m bench", *(argv or sys.argv[1:])])}
    results: dict = {}
    errors: dict = {}
    bar = tqdm(total=sum(f[4](cfg) for f in chosen), unit="step", file=sys.__stderr__, dynamic_ncols=True)
    for key, title, fn, _, _ in chosen:
        bar.set_description(f"figure {key}: {title}")
        log_path = os.path.join(args.out, f"fig{key}.log")
        with open(log_path, "w") as log, contextlib.redirect_stderr(log):
            try:
                results[key] = fn(cfg, lambda: bar.update(1))
            except Exception:
                errors[key] = traceback.format_exc()
                log.write(errors[key])
    bar.close()
    meta.update(load_after=os.getloadavg(), others_running_after=others_running(),
                seconds=round(time.time() - started, 1))

    table = render(chosen, results, errors, meta)
    print(table)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump({"meta": meta, "figures": results, "errors": errors}, f, default=str)
    if "1" in results:
        plot_cdf(results["1"]["samples_us"], os.path.join(args.out, "propagation_cdf.png"), meta)
    for key, err in errors.items():
        print(f"figure {key} FAILED (log: {os.path.join(args.out, f'fig{key}.log')}):\n"
              f"{err.strip().splitlines()[-1]}", file=sys.stderr)
    return 1 if errors else 0


def render(chosen, results: dict, errors: dict, meta: dict) -> str:
    noisy = meta["others_running_before"] or meta["others_running_after"]
    lines = [f"Machine: {meta['machine']}, Linux {meta['kernel']}; {meta['mode']} run of {meta['started']} "
             f"({meta['seconds']} s); load average {meta['load_before'][0]:.1f} before, "
             f"{meta['load_after'][0]:.1f} after"
             + (f"; **other test runs were using the machine** ({len(noisy)} processes)" if noisy else "") + ".",
             "", "| figure | logonmesh | baseline, same run | ratio | target |", "|---|---|---|---|---|"]
    for key, title, _, rows, _ in chosen:
        if rows is None:
            continue
        if key in errors:
            lines.append(f"| {key}. {title} | **FAILED**: {errors[key].strip().splitlines()[-1][:150]} | | | |")
            continue
        for row in rows(results[key]):
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if meta["mode"] == "quick":
        lines += ["", "_Quick run: small counts, a smoke test of the suite; these figures say nothing about speed._"]
    if "p" in results:
        lines += ["", "## Profiles", ""]
        for name, text in results["p"].items():
            lines += [f"### {name}", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def plot_cdf(series: dict[str, list[float]], path: str, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, samples in series.items():
        xs = sorted(samples)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.plot(xs, ys, label=f"{name} (p50 {pct(xs, 50):,.0f} µs)")
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency, µs (log scale)")
    ax.set_ylabel("fraction of messages")
    ax.set_title("Merge propagation vs bare one-way hops, same run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.text(0.01, 0.01, f"{meta['machine']} · {meta['mode']} run {meta['started']}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
