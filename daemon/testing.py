"""A multi-node test harness for logonmesh and the apps built on it.

``LocalCluster`` starts real nodes (a daemon and a web process each, as
subprocesses) in one temporary directory, cuts the network between them in
the manner of Schism, and cleans up after itself even when a test fails or is
interrupted.  ``Browser`` drives the web pages like a person with cookies,
``eventually`` waits for a condition with a deadline.  It is a pytest plugin
(entry point ``pytest11``): the ``local_cluster`` fixture is available to any
project that installs logonmesh, and a failing test shows every node's logs.

A partition is made inside the daemons, not in the kernel: each daemon is told
over its ipc socket which peers to ignore, and it drops every bus and peer
message to and from them.  That is why it needs no root, and also why it does
not simulate packet loss at the network level or clock skew.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from typing import Any, Callable, Iterable, Sequence, TypeVar

import requests

from daemon.client import DaemonClient, DaemonUnavailable

T = TypeVar("T")
STOP_TIMEOUT = 5.0
_live_clusters: set["LocalCluster"] = set()


def eventually(fn: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call ``fn`` until it stops raising (AssertionError or any Exception); return its value.

    When the deadline passes, the last failure is raised, so the test shows why
    the condition never held rather than a bare timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the test runner dies, so no node outlives it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Proc:
    """One subprocess with its output captured to a file."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log_path: str) -> None:
        self.label, self.argv, self.env, self.log_path = label, argv, env, log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        if self.alive:
            return
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; returns the exit code."""
        if self.popen is None:
            return None
        self.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.alive:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT)

    def logs(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Node:
    """A handle on one node: its daemon, its web process and the ways to hurt them."""

    def __init__(self, cluster: "LocalCluster", name: str, web: bool) -> None:
        self.cluster = cluster
        self.name = name
        self.port = free_port() if web else None
        self.url = f"http://127.0.0.1:{self.port}" if web else ""
        env = dict(cluster.env, LOGONMESH_NODE=name)
        logs = cluster.dir
        py = [sys.executable, "-m", "daemon"]
        self.daemon = Proc(f"{name} daemon", py + ["daemon"], env, os.path.join(logs, f"{name}.daemon.log"))
        self.web = (Proc(f"{name} web", py + ["web", "--port", str(self.port)], env,
                         os.path.join(logs, f"{name}.web.log")) if web else None)
        self.client = DaemonClient(os.path.join(cluster.run_dir, f"{name}.ipc"), cluster.cookie.encode(),
                                   name="harness")
        self.paused = False

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.url or 'no web'}>"

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.daemon, self.web) if p is not None]

    @property
    def running(self) -> bool:
        return self.daemon.alive and not self.paused

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def stop(self) -> None:
        """SIGTERM to both processes (the web first, so it never sees its daemon vanish)."""
        self.paused = False
        for proc in reversed(self.procs):
            proc.stop()

    def kill(self) -> None:
        """SIGKILL to both processes: a crash, with no goodbye to the cluster."""
        self.paused = False
        for proc in self.procs:
            proc.kill()

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start()
        if wait:
            self.cluster.wait_ready([self])

    def pause(self) -> None:
        """SIGSTOP: the node is frozen, its sockets open but silent."""
        for proc in self.procs:
            proc.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        for proc in self.procs:
            proc.signal(signal.SIGCONT)
        self.paused = False

    def logs(self) -> str:
        return "".join(f"----- {p.label} -----\n{p.logs()}" for p in self.procs)

    def call(self, op: str, **args: Any) -> Any:
        """One request to this node's daemon over its ipc socket."""
        return self.client.call(op, timeout_ms=2000, **args)

    def status(self) -> dict:
        return self.call("status")

    def peers_up(self) -> list[str]:
        return self.call("ping")["peers_up"]

    def healthy(self) -> bool:
        if self.web is None:
            try:
                self.call("ping")
                return True
            except DaemonUnavailable:
                return False
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class LocalCluster:
    """Nodes sharing one temporary directory: the cluster database, the cookie and the run dir."""

    def __init__(self, heartbeat_ms: int = 100, down_after: int = 3, discovery_ms: int = 200,
                 ready_timeout: float = 20.0, env: dict[str, str] | None = None) -> None:
        # /tmp, not a deep pytest tmp_path: ipc paths must stay under ~107 bytes.
        self.dir = tempfile.mkdtemp(prefix="lm-", dir="/tmp")
        self.run_dir = os.path.join(self.dir, "run")
        self.db = os.path.join(self.dir, "cluster.db")
        self.cookie = os.urandom(24).hex()
        self.ready_timeout = ready_timeout
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOGONMESH_")}
        self.env.update({
            "LOGONMESH_DB": self.db, "LOGONMESH_RUN_DIR": self.run_dir, "LOGONMESH_COOKIE": self.cookie,
            "LOGONMESH_HEARTBEAT_MS": str(heartbeat_ms), "LOGONMESH_DOWN_AFTER": str(down_after),
            "LOGONMESH_DISCOVERY_MS": str(discovery_ms), "PYTHONUNBUFFERED": "1",
        })
        self.env.update(env or {})
        self.heartbeat_ms = heartbeat_ms
        self.down_after = down_after
        self.nodes: list[Node] = []
        self._counters: dict[str, Iterable[int]] = {}
        _live_clusters.add(self)

    # ---- life -----------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            sys.stderr.write(self.all_logs())
        self.close()

    def close(self) -> None:
        """Stop every process and remove the directory; safe to call twice."""
        for node in self.nodes:
            node.resume()
        for node in self.nodes:
            node.stop()
            node.client.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        _live_clusters.discard(self)

    def all_logs(self) -> str:
        return "".join(node.logs() for node in self.nodes)

    def start_nodes(self, prefix: str, n: int, web: bool = True, wait: bool = True) -> list[Node]:
        """Start n more nodes named prefix1, prefix2, … (numbering goes on across calls)."""
        counter = self._counters.setdefault(prefix, itertools.count(1))
        new = [Node(self, f"{prefix}{next(counter)}", web) for _ in range(n)]
        self.nodes.extend(new)
        for node in new:
            node.start()
        if wait:
            self.wait_ready(new)
        return new

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_ready(self, nodes: Sequence[Node] | None = None, timeout: float | None = None) -> None:
        """Until each node is healthy and sees every other live node up."""
        nodes = list(nodes or self.live())

        def ready() -> None:
            for node in nodes:
                for proc in node.procs:
                    if not proc.alive:
                        raise RuntimeError(f"{proc.label} exited with {proc.popen.returncode}:\n"
                                           f"{proc.logs()[-2000:]}")
                assert node.healthy(), f"{node.name} is not healthy yet"
                self.assert_sees(node, [n for n in self.live() if n is not node])

        eventually(ready, timeout=timeout or self.ready_timeout, interval=0.05)

    def assert_sees(self, node: Node, others: Iterable[Node], up: bool = True) -> None:
        seen = set(node.peers_up())
        for other in others:
            assert (other.name in seen) == up, f"{node.name} sees {sorted(seen)}; {other.name} should be " \
                                               f"{'up' if up else 'down'}"

    # ---- faults ---------------------------------------------------------

    def partition(self, *groups: Sequence[Node]) -> None:
        """Nodes talk only within a group they share; nodes in no group form one more group.

        Groups may overlap (a bridge node sits in two).  Each daemon is told which
        peers to drop, both ways, and reports them down at once.
        """
        groups = [set(g) for g in groups]
        rest = set(self.nodes) - set().union(*groups)
        if rest:
            groups.append(rest)
        for node in self.live():
            allowed = set().union(*(g for g in groups if node in g))
            blocked = [n.name for n in self.nodes if n not in allowed]
            node.call("partition", peers=blocked, replace=True)

    def isolate(self, node: Node) -> None:
        self.partition([node])

    def halves(self) -> tuple[list[Node], list[Node]]:
        nodes = list(self.nodes)
        half = len(nodes) // 2
        self.partition(nodes[:half], nodes[half:])
        return nodes[:half], nodes[half:]

    def majorities_ring(self) -> None:
        """Each node sees a majority (itself and its nearest ring neighbours); no two see the same set."""
        nodes = list(self.nodes)
        n = len(nodes)
        reach = (n // 2) // 2 + (n // 2) % 2  # neighbours on each side, so 1 + 2*reach > n/2
        groups = [[nodes[(i + d) % n] for d in range(-reach, reach + 1)] for i in range(n)]
        for node, group in zip(nodes, groups):
            blocked = [o.name for o in nodes if o not in group]
            if node.running:
                node.call("partition", peers=blocked, replace=True)

    def bridge(self) -> tuple[list[Node], Node, list[Node]]:
        """Two halves that cannot see each other, and one node in the middle that sees both."""
        nodes = list(self.nodes)
        mid = len(nodes) // 2
        left, bridge, right = nodes[:mid], nodes[mid], nodes[mid + 1:]
        self.partition(left + [bridge], [bridge] + right)
        return left, bridge, right

    def heal(self) -> None:
        for node in self.live():
            node.call("heal")

    def lossy(self, node: Node, fraction: float) -> None:
        node.call("lossy", fraction=float(fraction))

    def converged(self) -> bool:
        """True when every running node reports the same cache digest."""
        try:
            digests = {node.status()["digest"] for node in self.live()}
        except DaemonUnavailable:
            return False
        return len(digests) == 1


class _InputParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input":
            a = dict(attrs)
            if a.get("name"):
                self.fields[a["name"]] = a.get("value") or ""


class Browser:
    """A requests session that acts like a person's browser on a node's pages.

    It keeps cookies (which, as in a real browser, ignore the port, so every
    local node sees the same session cookie) and fills ``csrf_token`` from the
    last HTML page it fetched.  Redirects are not followed, so a test sees
    every 302.
    """

    def __init__(self, url: str, session: requests.Session | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.csrf_token: str | None = None
        self.last: requests.Response | None = None

    def at(self, url: str) -> "Browser":
        """The same browser (same cookies) pointed at another node."""
        other = Browser(url, self.session, self.timeout)
        other.csrf_token = self.csrf_token
        return other

    def _remember(self, resp: requests.Response) -> requests.Response:
        self.last = resp
        if "text/html" in resp.headers.get("Content-Type", ""):
            parser = _InputParser()
            parser.feed(resp.text)
            if "csrf_token" in parser.fields:
                self.csrf_token = parser.fields["csrf_token"]
        return resp

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("allow_redirects", False)
        return self._remember(self.session.get(self.url + path, timeout=self.timeout, **kw))

    def post_form(self, path: str, data: dict[str, str] | None = None, csrf: bool = True,
                  **kw: Any) -> requests.Response:
        data = dict(data or {})
        if csrf and "csrf_token" not in data and self.csrf_token:
            data["csrf_token"] = self.csrf_token
        kw.setdefault("allow_redirects", False)
        return self._remember(self.session.post(self.url + path, data=data, timeout=self.timeout, **kw))

    def signup(self, username: str, password: str) -> requests.Response:
        self.get("/signup")
        return self.post_form("/signup", {"username": username, "password": password})

    def login(self, username: str, password: str) -> requests.Response:
        self.get("/")
        return self.post_form("/", {"username": username, "password": password})

    def logout(self) -> requests.Response:
        self.get("/budget")
        return self.post_form("/logout")

    def authenticated(self) -> bool:
        """Whether /budget on this node serves the page (not a redirect to the login)."""
        return self.get("/budget").status_code == 200


@atexit.register
def _close_leftovers() -> None:
    for cluster in list(_live_clusters):
        cluster.close()


# ---- pytest plugin ---------------------------------------------------------

try:
    import pytest
except ImportError:  # the harness works without pytest; only the fixture needs it
    pytest = None

if pytest is not None:
    @pytest.fixture
    def local_cluster() -> Any:
        """A LocalCluster with test-sized timings, closed after the test whatever happens."""
        cluster = LocalCluster()
        try:
            yield cluster
        finally:
            cluster.close()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: Any, call: Any) -> Any:
        outcome = yield
        report = outcome.get_result()
        cluster = getattr(item, "funcargs", {}).get("local_cluster")
        if report.failed and isinstance(cluster, LocalCluster):
            report.sections.append(("logonmesh node logs", cluster.all_logs()))
