"""Figure 8, sessions written behind: what keeping sessions across a full restart costs.

Each round runs the same measurements twice, interleaved, with sessions
persisted (the default) and with ``LOGONMESH_EPHEMERAL_SESSIONS=1`` (the
"before"), on fresh two-node clusters of the demo:

- a login's daemon part: ``session_create`` over ipc on node 1, one after the
  other, µs per call (what the web waits for after checking the password);
- a whole login over HTTP: ``POST /`` with the form, ms (the password hash
  dominates it);
- figure 1's propagation p50 (users signed up on node 1, published to node 2),
  to show that the session batches on the worker do not slow the mesh.

    python -m bench --only 8 [--quick]
"""

from __future__ import annotations

import time
import uuid

from bench.common import median, pct
from bench.propagation import run as propagation
from logonmesh.testing import Browser, LocalCluster

PASSWORD = "correct horse battery"
MODES = {"persisted": {}, "ephemeral": {"LOGONMESH_EPHEMERAL_SESSIONS": "1"}}


def _logins(env: dict, calls: int, web_logins: int) -> dict:
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60, env=env) as cluster:
        n1, _ = cluster.start_nodes("q", 2)
        username = f"q{uuid.uuid4().hex[:10]}"
        b = Browser(n1.url)
        b.signup(username, PASSWORD)
        ipc_us = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            n1.call("session_create", username=username, device="bench")
            ipc_us.append((time.perf_counter_ns() - t0) / 1000)
        web_ms = []
        for _ in range(web_logins):
            fresh = Browser(n1.url)
            fresh.get("/")
            t0 = time.perf_counter_ns()
            resp = fresh.post_form("/", {"username": username, "password": PASSWORD})
            web_ms.append((time.perf_counter_ns() - t0) / 1e6)
            assert resp.status_code == 302, resp.status_code
        time.sleep(0.5)  # let the last batch go out, to count it
        stats = n1.status()["stats"]
        return {"ipc_us": ipc_us, "web_ms": web_ms, "saved": stats.get("sessions_saved", 0),
                "batches": stats.get("session_batches", 0)}


def run(rounds: int, calls: int, web_logins: int, prop_n: int, rate: float, progress=None) -> dict:
    out: dict = {mode: {"ipc_us": [], "web_ms": [], "prop_p50_us": [], "saved": 0, "batches": 0} for mode in MODES}
    for _ in range(rounds):
        for mode, env in MODES.items():
            r = _logins(env, calls, web_logins)
            o = out[mode]
            o["ipc_us"] += r["ipc_us"]
            o["web_ms"] += r["web_ms"]
            o["saved"] += r["saved"]
            o["batches"] += r["batches"]
            o["prop_p50_us"].append(pct(propagation(2, prop_n, rate, env=env)["samples"], 50))
            if progress is not None:
                progress()
    return out


def summary(f: dict) -> dict:
    return {mode: {"session_create_p50_us": pct(v["ipc_us"], 50), "session_create_p99_us": pct(v["ipc_us"], 99),
                   "web_login_p50_ms": pct(v["web_ms"], 50), "web_login_p99_ms": pct(v["web_ms"], 99),
                   "propagation_p50_us": median(v["prop_p50_us"]), "sessions_saved": v["saved"],
                   "batches": v["batches"]} for mode, v in f.items()}
