"""Figure 7, server-side sessions: what reading ``flask.session`` costs per request, and how fast a write travels.

Read cost, in process.  Each sample is one ``open_session(app, request)`` plus
reading one value, in a fresh ``app.test_request_context`` with the session's
cookie (the context is made and pushed outside the timed span; parsing the
cookie is inside it, as in a real request).  The same small logged-in session
(a token, the two lifetime anchors, a CSRF secret, a last-viewed path and a
counter) is read four ways, interleaved round by round so that the machine's
noise falls on all alike:

- ``cookie``: Flask's own SecureCookieSessionInterface (the data in the signed cookie);
- ``mesh``: logonmesh.flask's MeshSessionInterface, the data held by a real
  mirror following a real daemon (``LocalCluster``, one node, no web);
- ``redis``: one Redis GET + ``pickle.loads`` on 127.0.0.1:6379, the
  Flask-Session way (``bench.apps.RedisSessionInterface``); skipped, and the
  table says why, when Redis is unreachable;
- ``roundtrip``: the mesh with its mirror replaced by ``bench.apps.AskTheDaemon``
  (never current), so every read is one ``session_data_get`` round trip: what
  the mirror saves.

Propagation, over HTTP.  Two nodes serve a tiny app (written to a temporary
directory, ``LocalCluster(app=..., cwd=...)``) with ``POST /set/<n>``
(``flask.session["v"] = n``) and ``GET /get``.  One ``requests.Session`` writes
on node 1, then polls node 2 until it reads the value: the sample is the time
from the write's response to the first read that shows it.  The baseline,
interleaved sample by sample, is the same loop on node 1 alone (write, then
read on the same node), so the difference is what crossing nodes costs.

    python -m bench --only 7 [--quick]
"""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import tempfile
import textwrap
import time
from typing import Any, Callable

import requests
from flask import Flask, Request, session
from flask.sessions import SecureCookieSessionInterface, SessionInterface

from bench.apps import REDIS_COOKIE, REDIS_PREFIX, REDIS_URL, SECRET_KEY, AskTheDaemon, RedisSessionInterface
from logonmesh.testing import LocalCluster, eventually

HEARTBEAT_MS, DISCOVERY_MS = 1000, 2000  # the other figures' settings
READ_TIMEOUT_S = 5.0                     # a write not readable on node 2 by then is counted as missed
WARM_UP = 10                             # writes not counted, before the samples
APP_MODULE = "lm_bench_sessions_app"
APP_SOURCE = '''
    """The tiny app of bench figure 7: set a session value on one node, read it on another."""
    from flask import Flask, jsonify, session

    from logonmesh.flask import LogonMesh


    def create_app():
        app = Flask(__name__)
        LogonMesh(app)

        @app.post("/set/<int:n>")
        def put(n):
            session["v"] = n
            return jsonify(v=n)

        @app.get("/get")
        def get():
            return jsonify(v=session.get("v"))
        return app
'''


def small_session() -> dict[str, Any]:
    """What a logged-in session of a small app holds: the mesh's reserved keys, a CSRF secret, two values."""
    return {"_lm_token": secrets.token_urlsafe(32), "_lm_login_left": 86_400_000, "_lm_seen_left": 3_599_000,
            "csrf_token": secrets.token_hex(20), "last_viewed": "/notes/42", "v": 1}


# ---- read cost, in process ------------------------------------------------------------------

class Reader:
    """One way to read the session: an app, its session interface, and the request cookie that names the data."""

    def __init__(self, app: Flask, cookie_name: str, cookie_value: str) -> None:
        self.app = app
        self.iface: SessionInterface = app.session_interface
        self.cookie = f"{cookie_name}={cookie_value}"
        self.cookie_bytes = len(cookie_value)

    def read_once(self) -> Any:
        """One untimed read, to check the reader sees the data."""
        with self.app.test_request_context(headers={"Cookie": self.cookie}) as ctx:
            return self.iface.open_session(self.app, ctx.request)

    def samples_us(self, n: int) -> list[float]:
        """n timed reads, each in a fresh request context: open_session + one value, in µs."""
        out = []
        clock = time.perf_counter_ns
        for _ in range(n):
            ctx = self.app.test_request_context(headers={"Cookie": self.cookie})
            ctx.push()
            try:
                req: Request = ctx.request
                t0 = clock()
                self.iface.open_session(self.app, req)["v"]  # type: ignore[index]
                out.append((clock() - t0) / 1000)
            finally:
                ctx.pop()
        return out


def cookie_reader(data: dict[str, Any]) -> Reader:
    app = Flask("bench_cookie")
    app.config["SECRET_KEY"] = SECRET_KEY
    app.session_interface = iface = SecureCookieSessionInterface()  # Flask's default, named
    serializer = iface.get_signing_serializer(app)
    assert serializer is not None
    return Reader(app, app.config["SESSION_COOKIE_NAME"], serializer.dumps(data))


def redis_reader(data: dict[str, Any]) -> tuple[Reader, Callable[[], None]]:
    """A reader on a session seeded in Redis, and how to remove the seed."""
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    sid = secrets.token_urlsafe(32)
    client.set(REDIS_PREFIX + sid, pickle.dumps(data), ex=3600)
    app = Flask("bench_redis")
    app.session_interface = RedisSessionInterface(client)

    def drop() -> None:
        client.delete(REDIS_PREFIX + sid)
        client.close()
    return Reader(app, REDIS_COOKIE, sid), drop


def mesh_app(cluster: LocalCluster, node: str) -> Flask:
    """An in-process app on the node's daemon, as a user's app is: ``LogonMesh(app)`` reading app.config."""
    from flask import jsonify

    from logonmesh.flask import LogonMesh
    app = Flask("bench_mesh")
    app.config.update(LOGONMESH_NODE=node, LOGONMESH_DB=cluster.db, LOGONMESH_RUN_DIR=cluster.run_dir,
                      LOGONMESH_COOKIE=cluster.cookie, LOGONMESH_HEARTBEAT_MS=cluster.heartbeat_ms)
    LogonMesh(app)

    @app.post("/write")
    def write() -> Any:
        session.update(app.config["BENCH_SESSION"])
        return jsonify(ok=True)
    return app


def mesh_readers(cluster: LocalCluster, node: str, data: dict[str, Any]) -> tuple[Reader, Reader, list[Flask]]:
    """The mesh reader (mirror current, holding the session written through the test client) and the round-trip
    reader (the same cookie, on an app whose mirror never vouches); and the apps, to close."""
    from itsdangerous import Signer

    from logonmesh.flask.mirror import UNKNOWN
    from logonmesh.flask.session import SIGNER_SALT
    app = mesh_app(cluster, node)
    app.config["BENCH_SESSION"] = data
    state = app.extensions["logonmesh"]
    state.start()
    resp = app.test_client().post("/write")
    assert resp.status_code == 200, resp.data
    name = app.config["SESSION_COOKIE_NAME"]
    raw = next(h.split(";", 1)[0].split("=", 1)[1] for h in resp.headers.getlist("Set-Cookie")
               if h.startswith(f"{name}="))
    sid = Signer(state.cookie_key, salt=SIGNER_SALT).unsign(raw).decode("ascii")
    eventually(lambda: isinstance(state.mirror.session_data(sid), bytes), timeout=20)
    mesh = Reader(app, name, raw)

    rt_app = mesh_app(cluster, node)
    rt_state = rt_app.extensions["logonmesh"]
    rt_state.mirror.close()
    rt_state.mirror = AskTheDaemon()
    assert rt_state.mirror.session_data(sid) is UNKNOWN
    return mesh, Reader(rt_app, name, raw), [app, rt_app]


def read_costs(rounds: int, calls: int, redis_ok: bool, tick: Callable[[], None]) -> dict:
    """µs per read for each reader, pooled over interleaved rounds of ``calls`` reads each."""
    data = small_session()
    cleanups: list[Callable[[], Any]] = []
    with LocalCluster(heartbeat_ms=HEARTBEAT_MS, discovery_ms=DISCOVERY_MS, ready_timeout=60) as cluster:
        (node,) = cluster.start_nodes("r", 1, web=False)
        mesh, roundtrip, apps = mesh_readers(cluster, node.name, data)
        cleanups += [app.extensions["logonmesh"].close for app in apps]
        readers = {"cookie": cookie_reader(data), "mesh": mesh, "roundtrip": roundtrip}
        if redis_ok:
            readers["redis"], drop = redis_reader(data)
            cleanups.append(drop)
        try:
            for name, reader in readers.items():
                got = dict(reader.read_once())
                assert got == data, f"{name} reads {got!r}, not the session written"
            samples: dict[str, list[float]] = {name: [] for name in readers}
            not_current = 0
            for _ in range(rounds):
                for name, reader in readers.items():
                    samples[name].extend(reader.samples_us(calls))
                not_current += not mesh.app.extensions["logonmesh"].mirror.current()
                tick()
        finally:
            for cleanup in cleanups:
                cleanup()
    return {"samples_us": samples, "cookie_bytes": {k: r.cookie_bytes for k, r in readers.items()},
            "mirror_not_current_after_rounds": not_current, "rounds": rounds, "calls": calls}


# ---- propagation, over HTTP ------------------------------------------------------------------

def write_then_read(http: requests.Session, writer: str, reader: str, n: int) -> tuple[float, int] | None:
    """(ms from the response of a write of v = n on ``writer`` to the first read on ``reader`` that shows it,
    the reads it took); None if no read showed it within READ_TIMEOUT_S."""
    resp = http.post(f"{writer}/set/{n}", timeout=5)
    resp.raise_for_status()
    written = time.perf_counter()
    deadline = written + READ_TIMEOUT_S
    reads = 0
    while True:
        got = http.get(f"{reader}/get", timeout=5)
        seen = time.perf_counter()
        reads += 1
        got.raise_for_status()
        if got.json()["v"] == n:
            return (seen - written) * 1000, reads
        if seen > deadline:
            return None


def propagation(writes: int, tick: Callable[[], None]) -> dict:
    """Write on node 1 → read on node 2, beside write → read on node 1, interleaved sample by sample."""
    tmp = tempfile.mkdtemp(prefix="lm-bench-sess-")
    try:
        with open(os.path.join(tmp, f"{APP_MODULE}.py"), "w") as f:
            f.write(textwrap.dedent(APP_SOURCE))
        with LocalCluster(heartbeat_ms=HEARTBEAT_MS, discovery_ms=DISCOVERY_MS, ready_timeout=60,
                          app=f"{APP_MODULE}:create_app", cwd=tmp) as cluster:
            a, b = cluster.start_nodes("w", 2, web=True)
            cross, local = requests.Session(), requests.Session()
            out: dict[str, list[float]] = {"cross_ms": [], "local_ms": [], "cross_reads": []}
            missed = {"cross_ms": 0, "local_ms": 0}
            for i in range(-WARM_UP, writes):  # the warm-up: the sessions' first saves, connections opened
                for key, http, reader in (("cross_ms", cross, b.url), ("local_ms", local, a.url)):
                    found = write_then_read(http, a.url, reader, i + WARM_UP)
                    if i < 0:
                        continue
                    if found is None:
                        missed[key] += 1
                        continue
                    out[key].append(found[0])
                    if key == "cross_ms":
                        out["cross_reads"].append(found[1])
                if i % 100 == 99:
                    tick()
            cross.close()
            local.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not out["cross_ms"] or not out["local_ms"]:
        raise RuntimeError(f"no write was read back within {READ_TIMEOUT_S} s: {missed}")
    tick()
    return {"writes": writes, "missed": missed, **out}


def run(rounds: int, calls: int, writes: int, redis_ok: bool, tick: Callable[[], None]) -> dict:
    return {"read": read_costs(rounds, calls, redis_ok, tick), "propagation": propagation(writes, tick)}
