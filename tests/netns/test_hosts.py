"""The cluster across hosts: Linux network namespaces as machines, Redis as the shared store.

The test builds its own small network, touching nothing it did not make:

    switch namespace: one bridge
    R  NET.2    redis-server (started here, nothing on disk)
    A  NET.11   daemon + web        (each node's tcp sockets are bound to its
    B  NET.12   daemon + web         host address and advertised with it;
    C  NET.13   daemon + web         nothing listens on loopback)
    this process: NET.1 on one more veth into the bridge, to speak HTTP to the webs

NET is a /24 of 198.18.0.0/15 (RFC 2544) that no address or route on this
machine uses, drawn afresh by each run (``netrange.py``); names carry this
process's pid, so two runs on one machine never clash, and a finalizer deletes every
namespace and veth even when a test fails.  Faults are real network faults: a
cable pulled, routes that blackhole a peer, redis-server stopped, processes
frozen with SIGSTOP.  The mesh runs with CURVE, as it should between hosts.
The control sockets (ipc) are files, which namespaces do not separate, so the
test still asks each daemon for its view directly.

Needs root and iproute2's ``ip``; elsewhere the module skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
import redis
import requests
import zmq

from logonmesh.daemon.client import DaemonClient
from logonmesh.testing import Browser, Proc, eventually
from netrange import free_prefix

PASSWORD = "correct horse battery"
NET = free_prefix()  # this run's /24, e.g. "198.18.7": a fixed one collides with a second run
ME = f"{NET}.1"
REDIS_IP = f"{NET}.2"
HOST_IPS = {"a": f"{NET}.11", "b": f"{NET}.12", "c": f"{NET}.13"}
WEB_PORT = 8000
HEARTBEAT_MS, DOWN_AFTER = 100, 3
ROW_TTL_S = 10 * DOWN_AFTER * HEARTBEAT_MS / 1000  # the daemon's stale limit: a Redis row lives this long
VIEW_S = 10.0       # membership follows a fault within a few heartbeats; slack for a busy 2-core box
CONVERGE_S = 30.0   # after a heal, TCP retransmission backoff can add seconds before traffic flows
TAG = f"lmt{os.getpid()}"  # every namespace and interface made here starts with this
BROWSE = """
import json, sys
import requests
from logonmesh.testing import Browser
url, action, username, password = sys.argv[1:5]
session = requests.Session()
session.trust_env = False
b = Browser(url, session, timeout=10)
r = b.signup(username, password) if action == "signup" else b.login(username, password)
print(json.dumps({"status": r.status_code, "location": r.headers.get("Location"), "text": r.text[:3000]}))
"""


def direct() -> requests.Session:
    """HTTP straight to the test's hosts: a proxy from the environment could not reach them."""
    session = requests.Session()
    session.trust_env = False
    return session


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    if shutil.which("redis-server") is None:
        return "needs redis-server"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _sweep_leftovers() -> None:
    """Delete namespaces of earlier runs whose process is gone (a SIGKILLed run cannot clean up)."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(r"^(lmt(\d+)(?:sw|[abcr]))\b", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            ip("netns", "del", m.group(1), check=False)


@dataclass
class Host:
    """One machine: a namespace, its address, and the node (daemon + web) running there."""

    name: str
    ns: str
    addr: str
    run_dir: str
    daemon: Proc | None = None
    web: Proc | None = None
    client: DaemonClient | None = None
    paused: bool = False
    blackholed: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{WEB_PORT}"

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.daemon, self.web) if p is not None]

    def call(self, op: str, **args):
        return self.client.call(op, timeout_ms=3000, **args)

    def peers_up(self) -> set[str]:
        return set(self.call("ping")["peers_up"])

    def healthy(self) -> bool:
        try:
            return direct().get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class Net:
    """The namespaces, the bridge, Redis and the three nodes; ``close`` undoes all of it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lmnet-", dir="/tmp")
        self.cookie = uuid.uuid4().hex
        self.switch = f"{TAG}sw"
        self.redis_ns = f"{TAG}r"
        self.namespaces: list[str] = []
        self.root_veth = f"{TAG}h"
        self.hosts: dict[str, Host] = {}
        self.redis: Proc | None = None
        self.db = f"redis://{REDIS_IP}:6379/0"

    # ---- building --------------------------------------------------------------

    def build(self) -> None:
        _sweep_leftovers()
        self._netns(self.switch)
        ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        ip("link", "set", "br0", "up", ns=self.switch)
        self._attach(self.redis_ns, REDIS_IP)
        for name, addr in HOST_IPS.items():
            ns = f"{TAG}{name}"
            self._attach(ns, addr)
            run_dir = os.path.join(self.dir, name, "run")
            self.hosts[name] = Host(name, ns, addr, run_dir)
        # this process's own door into the network, to speak HTTP and Redis to the hosts
        ip("link", "add", self.root_veth, "type", "veth", "peer", "name", "up-root", "netns", self.switch)
        self._plug("up-root")
        ip("addr", "add", f"{ME}/24", "dev", self.root_veth)
        ip("link", "set", self.root_veth, "up")

    def _netns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("link", "set", "lo", "up", ns=ns)

    def _attach(self, ns: str, addr: str) -> None:
        """A namespace with one veth (eth0) whose other end is a port of the bridge."""
        self._netns(ns)
        port = f"p-{ns[len(TAG):]}"
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
        self._plug(port)
        ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)

    def _plug(self, port: str) -> None:
        ip("link", "set", port, "master", "br0", ns=self.switch)
        ip("link", "set", port, "up", ns=self.switch)

    # ---- processes -------------------------------------------------------------

    def in_ns(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def start_redis(self) -> None:
        argv = self.in_ns(self.redis_ns, ["redis-server", "--bind", REDIS_IP, "--port", "6379",
                                          "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                          "--dir", self.dir])
        self.redis = Proc("redis", argv, dict(os.environ), os.path.join(self.dir, "redis.log"))
        self.redis.start()
        eventually(lambda: self.redis_client().ping(), timeout=10, interval=0.05)

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.stop()

    def redis_client(self) -> redis.Redis:
        return redis.Redis(host=REDIS_IP, port=6379, socket_timeout=1, socket_connect_timeout=1,
                           decode_responses=True)

    def env(self, host: Host) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGONMESH_")}
        env.update({
            "LOGONMESH_NODE": host.name, "LOGONMESH_DB": self.db, "LOGONMESH_COOKIE": self.cookie,
            "LOGONMESH_RUN_DIR": host.run_dir, "LOGONMESH_BIND": host.addr,
            "LOGONMESH_ADVERTISE": host.addr, "LOGONMESH_HEARTBEAT_MS": str(HEARTBEAT_MS),
            "LOGONMESH_DOWN_AFTER": str(DOWN_AFTER), "LOGONMESH_DISCOVERY_MS": "200",
            "LOGONMESH_HOST": host.addr, "LOGONMESH_PORT": str(WEB_PORT), "PYTHONUNBUFFERED": "1",
            "LOGONMESH_CURVE": "1",  # between hosts the mesh is encrypted (docs/deploy.md)
        })
        return env

    def start_node(self, host: Host) -> None:
        py = [sys.executable, "-m", "logonmesh"]
        logs = os.path.join(self.dir, host.name)
        os.makedirs(logs, exist_ok=True)
        env = self.env(host)
        host.daemon = Proc(f"{host.name} daemon", self.in_ns(host.ns, py + ["daemon"]), env,
                           os.path.join(logs, "daemon.log"))
        host.web = Proc(f"{host.name} web", self.in_ns(host.ns, py + ["web"]), env, os.path.join(logs, "web.log"))
        host.client = DaemonClient(os.path.join(host.run_dir, f"{host.name}.ipc"), self.cookie.encode(),
                                   name="netns-test")
        host.daemon.start()
        host.web.start()

    def wait_ready(self) -> None:
        def ready() -> None:
            for h in self.hosts.values():
                for p in h.procs:
                    assert p.alive, f"{p.label} exited:\n{p.logs()[-2000:]}"
                assert h.healthy(), f"{h.name} web not healthy yet"
                assert h.peers_up() == set(self.hosts) - {h.name}, f"{h.name} sees {h.peers_up()}"
        eventually(ready, timeout=60, interval=0.1)

    # ---- faults ----------------------------------------------------------------

    def link(self, host: Host, up: bool) -> None:
        """Pull (or plug back) the host's cable: its switch port goes down, its own interface loses carrier.

        The host keeps its address, so a person on the host itself still reaches its web.
        """
        ip("link", "set", f"p-{host.name}", "up" if up else "down", ns=self.switch)

    def browse(self, host: Host, action: str, username: str) -> dict:
        """Sign up or log in from inside the host's namespace, where its web stays reachable when cut off."""
        argv = self.in_ns(host.ns, [sys.executable, "-c", BROWSE, host.url, action, username, PASSWORD])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    def cut(self, side: list[Host], other: list[Host]) -> None:
        """Blackhole every route between the two sides: both still reach Redis, not each other."""
        for a in side:
            for b in other:
                for src, dst in ((a, b), (b, a)):
                    ip("route", "add", "blackhole", f"{dst.addr}/32", ns=src.ns)
                    src.blackholed.append(dst.addr)

    def mend(self) -> None:
        for h in self.hosts.values():
            for addr in h.blackholed:
                ip("route", "del", "blackhole", f"{addr}/32", ns=h.ns, check=False)
            h.blackholed.clear()

    def pause(self, host: Host) -> None:
        for p in host.procs:
            p.signal(signal.SIGSTOP)
        host.paused = True

    def resume(self, host: Host) -> None:
        for p in host.procs:
            p.signal(signal.SIGCONT)
        host.paused = False

    # ---- teardown --------------------------------------------------------------

    def logs(self) -> str:
        parts = []
        for h in self.hosts.values():
            parts += [f"----- {p.label} -----\n{p.logs()[-6000:]}" for p in h.procs]
        if self.redis is not None:
            parts.append(f"----- redis -----\n{self.redis.logs()[-2000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Every process stopped, every namespace and veth deleted, whatever state the tests left."""
        for h in self.hosts.values():
            for p in h.procs:
                p.stop()
            if h.client is not None:
                h.client.close()
        if self.redis is not None:
            self.redis.stop()
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.root_veth, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    net = Net()
    try:
        try:
            net.build()
        except RuntimeError as exc:
            if "Operation not permitted" in str(exc):
                pytest.skip(f"cannot create network namespaces here: {exc}")
            raise
        net.start_redis()
        for host in net.hosts.values():
            net.start_node(host)
        net.wait_ready()
        yield net
    finally:
        net.close()
        leftovers = [line for line in ip("netns", "list", check=False).stdout.splitlines() if line.startswith(TAG)]
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture
def hosts(net: Net, request: pytest.FixtureRequest) -> Iterator[tuple[Host, Host, Host]]:
    """A, B and C, all healthy; afterwards every fault is undone and the cluster is whole again."""
    failures = request.session.testsfailed
    try:
        yield net.hosts["a"], net.hosts["b"], net.hosts["c"]
    finally:
        if request.session.testsfailed > failures:  # shown under "captured stderr" of the failed test
            sys.stderr.write(net.logs())
        net.mend()
        for h in net.hosts.values():
            net.link(h, True)
            if h.paused:
                net.resume(h)
        if net.redis is not None and not net.redis.alive:
            net.start_redis()
        net.wait_ready()


# ---- helpers ----------------------------------------------------------------------

def new_name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def sign_up(host: Host, username: str) -> requests.Response:
    return Browser(host.url, direct()).signup(username, PASSWORD)


def page_text(html: str) -> str:
    """What a person reads on the page (for failure messages): tags and the page header dropped."""
    body = html.split("</header>", 1)[-1]
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())[:400]


def assert_signed_up(host: Host, username: str) -> None:
    resp = sign_up(host, username)
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), \
        f"sign-up of {username} on {host.name}: {resp.status_code} {page_text(resp.text)}"


def logged_in(host: Host, username: str) -> Browser:
    b = Browser(host.url, direct())
    resp = b.login(username, PASSWORD)
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/budget"), \
        f"login of {username} on {host.name}: {resp.status_code} {page_text(resp.text)}"
    return b


def holds(fn: Callable[[], object], what: str) -> Callable[[], None]:
    """For eventually: a check that raises AssertionError (pytest.fail would escape it)."""
    def check() -> None:
        assert fn(), what
    return check


def carried(browser: Browser, host: Host) -> Browser:
    """The same person on another host: a browser keeps cookies per host name, so carry the session cookie.

    In production one name, behind a load balancer, fronts every host.
    """
    other = Browser(host.url, direct())
    for cookie in browser.session.cookies:
        other.session.cookies.set(cookie.name, cookie.value, domain=host.addr, path=cookie.path)
    return other


def knows(host: Host, username: str) -> None:
    assert host.call("user", username=username) is not None, f"{host.name} does not know {username}"


def sees(host: Host, up: set[str]) -> Callable[[], None]:
    def check() -> None:
        assert host.peers_up() == up, f"{host.name} sees {host.peers_up()}, expected {up}"
    return check


def converged(*hosts: Host) -> None:
    digests = {h.name: h.call("status")["digest"] for h in hosts}
    assert len(set(digests.values())) == 1, f"digests differ: {digests}"


def registry_names(net: Net) -> set[str]:
    return {k.rsplit(":", 1)[1] for k in net.redis_client().scan_iter("logonmesh:node:*")}


# ---- the tests --------------------------------------------------------------------

def test_sign_up_on_a_then_log_in_on_c(net: Net, hosts: tuple[Host, Host, Host]) -> None:
    a, b, c = hosts
    for h in hosts:  # every endpoint carries the host's own address: nothing on loopback or 0.0.0.0
        status = h.call("status")
        assert status["bus"].startswith(f"tcp://{h.addr}:") and status["peer"].startswith(f"tcp://{h.addr}:")
    rows = {k: net.redis_client().hgetall(k) for k in net.redis_client().scan_iter("logonmesh:node:*")}
    assert {r["id"]: r["bus_endpoint"].split(":")[1] for r in rows.values()} == \
        {n: f"//{addr}" for n, addr in HOST_IPS.items()}
    outsider = zmq.Context.instance().socket(zmq.SUB)  # no CURVE key: the handshake must fail
    outsider.linger = 0
    outsider.subscribe(b"")
    outsider.connect(a.call("status")["bus"])
    try:
        assert not outsider.poll(1000), "a subscriber without the cluster key heard the bus (10 heartbeats)"
    finally:
        outsider.close()
    username = new_name("ann")
    assert_signed_up(a, username)
    eventually(lambda: knows(c, username), timeout=VIEW_S)
    browser = logged_in(c, username)
    assert username in browser.get("/budget").text
    eventually(holds(lambda: carried(browser, b).authenticated(), "session not on B yet"), timeout=VIEW_S)
    assert net.redis_client().hget(f"logonmesh:user:{username}", "username") == username


def test_partition_between_hosts_while_redis_stays_reachable(net: Net, hosts: tuple[Host, Host, Host]) -> None:
    """A is cut from B and C by the network; all three still reach Redis, which keeps names unique."""
    a, b, c = hosts
    net.cut([a], [b, c])
    eventually(sees(a, set()), timeout=VIEW_S)
    eventually(sees(b, {"c"}), timeout=VIEW_S)
    eventually(sees(c, {"b"}), timeout=VIEW_S)
    left, right, contested = new_name("left"), new_name("right"), new_name("both")
    assert_signed_up(a, left)
    assert_signed_up(b, right)
    assert_signed_up(a, contested)
    resp = sign_up(b, contested)
    assert resp.status_code == 200 and "taken" in resp.text, "Redis decides a name across the partition"
    eventually(lambda: knows(c, right), timeout=VIEW_S)
    with pytest.raises(AssertionError):
        knows(c, left)
    net.mend()
    for h in hosts:
        eventually(sees(h, set(net.hosts) - {h.name}), timeout=CONVERGE_S)
    eventually(lambda: converged(a, b, c), timeout=CONVERGE_S)
    for h in hosts:
        for name in (left, right, contested):
            knows(h, name)
    logged_in(c, left)
    logged_in(a, right)


def test_host_link_down_then_back(net: Net, hosts: tuple[Host, Host, Host]) -> None:
    """A loses its link: cut from its peers and from Redis.  Logins go on; sign-ups there wait for Redis."""
    a, b, c = hosts
    before = new_name("before")
    assert_signed_up(b, before)
    eventually(lambda: knows(a, before), timeout=VIEW_S)
    net.link(a, False)
    eventually(sees(b, {"c"}), timeout=VIEW_S)
    eventually(sees(c, {"b"}), timeout=VIEW_S)
    eventually(sees(a, set()), timeout=VIEW_S)

    def refused_clearly() -> None:  # from a person on host A itself: nobody else can reach it now
        resp = net.browse(a, "signup", new_name("cut"))
        assert resp["status"] == 503 and "Sign-ups are paused" in resp["text"], resp
    eventually(refused_clearly, timeout=VIEW_S)
    resp = net.browse(a, "login", before)  # served from A's cache: no network needed
    assert (resp["status"], resp["location"]) == (302, "/budget"), resp
    during = new_name("during")
    assert_signed_up(c, during)
    # A's row expired
    eventually(holds(lambda: "a" not in registry_names(net), "row of a still there"), timeout=ROW_TTL_S + VIEW_S)
    net.link(a, True)
    # re-announced by itself
    eventually(holds(lambda: "a" in registry_names(net), "row of a not back"), timeout=CONVERGE_S)
    for h in hosts:
        eventually(sees(h, set(net.hosts) - {h.name}), timeout=CONVERGE_S)
    eventually(lambda: converged(a, b, c), timeout=CONVERGE_S)
    logged_in(a, during)
    assert_signed_up(a, new_name("after"))


def test_redis_stopped_then_restarted(net: Net, hosts: tuple[Host, Host, Host]) -> None:
    """Without Redis the mesh goes on (heartbeats, sessions, logins); sign-ups wait; all recovers."""
    a, b, c = hosts
    old = new_name("old")
    assert_signed_up(a, old)
    eventually(lambda: knows(c, old), timeout=VIEW_S)
    errors_before = {h.name: h.call("status")["stats"].get("registry_errors", 0) for h in hosts}
    net.stop_redis()

    def registry_failing_everywhere() -> None:
        for h in hosts:
            assert h.call("status")["stats"].get("registry_errors", 0) >= errors_before[h.name] + 5
    eventually(registry_failing_everywhere, timeout=VIEW_S)
    for h in hosts:  # far past the down limit, and still every peer is up: heartbeats are the mesh's
        sees(h, set(net.hosts) - {h.name})()
    browser = logged_in(b, old)
    eventually(holds(lambda: carried(browser, c).authenticated(), "session not on C yet"), timeout=VIEW_S)
    resp = sign_up(a, new_name("nope"))
    assert resp.status_code == 503 and "Sign-ups are paused" in resp.text, resp.text[:300]
    assert "Traceback" not in resp.text

    net.start_redis()  # empty: this Redis keeps nothing on disk
    eventually(holds(lambda: registry_names(net) == set(net.hosts), "rows not back"), timeout=CONVERGE_S)
    eventually(holds(lambda: net.redis_client().exists(f"logonmesh:user:{old}"), "users not restored"),
               timeout=CONVERGE_S)
    fresh = new_name("fresh")
    eventually(lambda: assert_signed_up(a, fresh), timeout=CONVERGE_S)
    eventually(lambda: knows(c, fresh), timeout=VIEW_S)
    resp = sign_up(b, old)
    assert resp.status_code == 200 and "taken" in resp.text


def test_frozen_host_beyond_the_down_limit(net: Net, hosts: tuple[Host, Host, Host]) -> None:
    """SIGSTOP A's processes until B and C call it down and its row expires; SIGCONT; it catches up."""
    a, b, c = hosts
    net.pause(a)
    eventually(sees(b, {"c"}), timeout=VIEW_S)
    eventually(sees(c, {"b"}), timeout=VIEW_S)
    meanwhile = new_name("meanwhile")
    assert_signed_up(b, meanwhile)
    browser = logged_in(c, meanwhile)
    eventually(holds(lambda: "a" not in registry_names(net), "row of a still there"), timeout=ROW_TTL_S + VIEW_S)
    net.resume(a)
    eventually(holds(lambda: "a" in registry_names(net), "row of a not back"), timeout=CONVERGE_S)
    for h in hosts:
        eventually(sees(h, set(net.hosts) - {h.name}), timeout=CONVERGE_S)
    eventually(lambda: converged(a, b, c), timeout=CONVERGE_S)
    knows(a, meanwhile)
    assert carried(browser, a).authenticated(), "the session made while A was frozen reached it"
