"""Figure 2, authenticated page throughput: GET /budget with a valid session, through waitress.

The real node (daemon + web from ``LocalCluster``) and the baselines of
``bench.apps`` run at the same time, each in its own process, all idle but
the one being driven; the runs are interleaved (hello, redis, logonmesh,
round trip, hello, ...) so that the machine's noise falls on all alike.  The
load comes from ``wrk`` on loopback (``-t2 -c16``, the reference's setting);
without wrk, from a small Python keep-alive client, and the table says so.

wrk counts a 302 as a success, so each variant's page is fetched before and
after its runs and must be a 200 that names the user.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import requests

from bench.apps import REDIS_COOKIE, seed_redis_session
from bench.common import pct
from logonmesh.testing import Browser, LocalCluster, eventually, free_port

WRK_THREADS, CONNECTIONS = 2, 16
SKIP_HEADERS = {"content-length", "date", "server", "set-cookie", "vary", "connection", "content-type"}


def load_generator() -> str:
    return "wrk" if shutil.which("wrk") else "python"


# A browser's cookie jar, per wrk thread: send the cookie, keep whatever Set-Cookie brings back.
JAR_LUA = """
local cookie = nil
init = function(args) cookie = args[1] end
request = function() return wrk.format(nil, nil, {["Cookie"] = cookie}) end
response = function(status, headers, body)
  local set = headers["Set-Cookie"]
  if set then cookie = set:match("^([^;]+)") end
end
"""


def drive(url: str, cookie: str | None, seconds: float, jar: bool = False) -> dict:
    """Requests/s and latency p50/p99 (ms) of one run against url.

    With ``jar`` each client keeps the cookie the server last set, as a browser
    does; without, it sends the same cookie for ever.
    """
    if load_generator() == "wrk":
        return _wrk(url, cookie, seconds, jar)
    return _python_load(url, cookie, seconds, jar)


def _wrk(url: str, cookie: str | None, seconds: float, jar: bool) -> dict:
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    script = None
    if cookie and jar:
        fd, script = tempfile.mkstemp(suffix=".lua", prefix="lm-jar-")
        with os.fdopen(fd, "w") as f:
            f.write(JAR_LUA)
        argv += ["-s", script, url, "--", cookie]
    elif cookie:
        argv += ["-H", f"Cookie: {cookie}", url]
    else:
        argv += [url]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        if script:
            os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else None}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _python_load(url: str, cookie: str | None, seconds: float, jar: bool) -> dict:
    """The fallback: CONNECTIONS keep-alive clients in threads (much weaker than wrk: say so)."""
    host_port, path = url.split("//", 1)[1].split("/", 1)
    host, port = host_port.split(":")
    latencies: list[float] = []
    count = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Cookie": cookie} if cookie else {}
        mine = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            conn.request("GET", "/" + path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if jar and resp.getheader("Set-Cookie"):
                headers["Cookie"] = resp.getheader("Set-Cookie").split(";", 1)[0]
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)
            count[0] += len(mine)
    threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": count[0] / (time.perf_counter() - t0), "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "non_2xx": 0, "socket_errors": None}


def _start_app(kind: str, env: dict | None = None, headers: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.apps", kind, "--port", str(port)]
    if headers is not None:
        argv += ["--headers", json.dumps(headers)]
    # Its log goes to a file, never to a pipe nobody reads: waitress warns on every queued burst, and
    # a full pipe would block the server in the middle of a run.
    log = tempfile.NamedTemporaryFile(prefix=f"lm-app-{kind}-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log.name  # removed when the run ends
    log.close()
    url = f"http://127.0.0.1:{port}"

    def up() -> None:
        if proc.poll() is not None:
            with open(log.name, errors="replace") as f:
                raise RuntimeError(f"bench.apps {kind} exited: {f.read()[-2000:]}")
        requests.get(url + "/", timeout=1)
    eventually(up, timeout=30, interval=0.1)
    return proc, url


def _check_page(url: str, cookie: str, user: str) -> None:
    resp = requests.get(url, headers={"Cookie": cookie}, allow_redirects=False, timeout=30)
    assert resp.status_code == 200 and user in resp.text, f"{url}: {resp.status_code}, not the page of {user}"


def run(repeat: int, seconds: float, redis_ok: bool, progress=None) -> dict:
    """Interleaved runs of every variant; raw runs per variant and the real page's headers."""
    with LocalCluster(heartbeat_ms=1000, discovery_ms=2000, ready_timeout=60) as cluster:
        node, _ = cluster.start_nodes("w", 2, web=True)
        user = "benchpage"
        browser = Browser(node.url)
        assert browser.signup(user, "correct horse battery").status_code in (302, 303)
        assert browser.login(user, "correct horse battery").status_code in (302, 303)
        cookie = f"logonmesh={browser.session.cookies.get('logonmesh')}"
        page = f"{node.url}/budget"
        _check_page(page, cookie, user)
        real = requests.get(page, headers={"Cookie": cookie}, allow_redirects=False, timeout=5)
        headers = {k: v for k, v in real.headers.items() if k.lower() not in SKIP_HEADERS}
        procs = []
        try:
            variants: dict[str, tuple[str, str | None, bool]] = {}
            proc, url = _start_app("hello")
            procs.append(proc)
            variants["hello"] = (url + "/", None, False)
            if redis_ok:
                proc, url = _start_app("redis", headers=headers)
                procs.append(proc)
                variants["redis"] = (url + "/budget", f"{REDIS_COOKIE}={seed_redis_session(user)}", True)
            variants["logonmesh"] = (page, cookie, True)
            variants["fixed_cookie"] = (page, cookie, False)
            proc, url = _start_app("roundtrip", env=dict(cluster.env, LOGONMESH_NODE=node.name))
            procs.append(proc)
            variants["roundtrip"] = (url + "/budget", cookie, True)
            for name, (url, c, jar) in variants.items():
                if c:
                    _check_page(url, c, user)
                if seconds >= 5:
                    drive(url, c, 1, jar)  # warm up: imports, template cache, connections
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            for _ in range(repeat):
                for name, (url, c, jar) in variants.items():
                    runs[name].append(drive(url, c, seconds, jar))
                    if progress is not None:
                        progress(1)
            for name, (url, c, _) in variants.items():
                if c:
                    _check_page(url, c, user)
            return {"generator": load_generator(), "seconds": seconds, "connections": CONNECTIONS,
                    "runs": runs, "headers": headers, "web_pid": node.web.pid, "daemon_pid": node.daemon.pid}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if os.path.exists(proc.log_path):
                    os.unlink(proc.log_path)
