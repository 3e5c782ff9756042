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
not simulate packet loss at the network level.  The cut is
remembered: a node restarted inside a partition is put back into it as soon as
its control socket answers (in the few milliseconds before, it may hear the
other side's bus), and a node that was frozen when a cut or a heal was made
gets it when it resumes.

A node's wall clock can be skewed (``clock_offset_s``, ``Node.set_clock``):
its processes run under libfaketime (Debian's ``faketime``), which reads the
offset from a file of the node's, so a step reaches a running node.  Only the
wall clock moves, never CLOCK_MONOTONIC, as with a real NTP step; and a node
that was never skewed runs without libfaketime at all.

Two process-level details matter for cleanup and for pause().  The parent-death
signal that kills nodes when the runner dies belongs to the thread that forked
them, so nodes are forked by the main thread or one long-lived spawner thread.
And every node writes to one shared SQLite file, so pause() makes sure it did
not freeze a node in the middle of a write (see Node.pause).
"""

from __future__ import annotations

import atexit
import ctypes
import email.utils
import glob
import itertools
import math
import os
import queue
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from html.parser import HTMLParser
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import requests

from logonmesh.daemon import config
from logonmesh.daemon.client import DaemonClient, DaemonUnavailable

T = TypeVar("T")
STOP_TIMEOUT = 5.0
PAUSE_ATTEMPTS = 50
PORT_RETRIES = 3
_live_clusters: set["LocalCluster"] = set()

LIBFAKETIME_ENV = "LOGONMESH_LIBFAKETIME"  # where libfaketime is, when it is in none of the usual places
LIBFAKETIME_PATHS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                     "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                     "/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                     "/usr/lib64/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")
FAKETIME_REREAD_S = 2.1   # libfaketime re-reads its file once the whole second has moved on twice: at most 2 s
CLOCK_WAIT_S = 10.0       # how long set_clock(wait=True) waits for the node's processes to show the step
DAEMON_CLOCK_TOLERANCE_S = 1.0  # wall_ms against the harness's clock: the ipc round trip, on a loaded machine
WEB_CLOCK_TOLERANCE_S = 2.0     # the Date header has whole seconds


def eventually(fn: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call ``fn`` until it stops raising (AssertionError or any Exception); return its value.

    A return value of exactly ``False`` counts as a failure too, so that
    ``eventually(cluster.converged)`` waits instead of passing at once on False.
    When the deadline passes, the last failure is raised, so the test shows why
    the condition never held rather than a bare timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
            if result is False:
                raise AssertionError(f"{getattr(fn, '__qualname__', fn)} returned False")
            return result
        except Exception:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClockSkewUnavailable(RuntimeError):
    """libfaketime is missing, or a node's clock cannot be stepped the way it was asked."""


def libfaketime() -> str:
    """The path of Debian's libfaketime (LOGONMESH_LIBFAKETIME first), or a one-line error naming the fix."""
    override = os.environ.get(LIBFAKETIME_ENV)
    if override:
        if os.path.isfile(override):
            return override
        raise ClockSkewUnavailable(f"{LIBFAKETIME_ENV}={override}: no such file")
    for pattern in LIBFAKETIME_PATHS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise ClockSkewUnavailable("skewing a node's clock needs libfaketime: apt-get install faketime "
                               f"(or set {LIBFAKETIME_ENV} to its libfaketime.so.1)")


def faketime_spec(offset_s: float) -> str:
    """An offset as libfaketime reads it from its file, relative to the real clock: '+300.000000s', '-0.500000s'."""
    if isinstance(offset_s, bool) or not isinstance(offset_s, (int, float)) or not math.isfinite(offset_s):
        raise ValueError(f"a clock offset is a finite number of seconds, not {offset_s!r}")
    return f"{float(offset_s) + 0.0:+.6f}s"  # + 0.0: -0.0 becomes +0.000000s


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the test runner dies, so no node outlives it.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process; that is why every node is forked by the main thread or by the
    long-lived spawner thread below, never by a short-lived worker thread.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Spawner:
    """Forks children on one daemon thread that lives as long as the process.

    A test may start or restart a node from a thread pool; if that thread
    forked the child itself, the parent-death signal would kill the node as
    soon as the pool's thread finished.  The main thread forks directly (it
    lives until exit, and a Ctrl-C must not strand a half-started child in a
    queue); any other thread hands its Popen to this one and waits.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(argv, **kw)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="logonmesh-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._jobs.put((argv, kw, done))
        return done.result()

    def _run(self) -> None:
        while True:
            argv, kw, done = self._jobs.get()
            try:
                done.set_result(subprocess.Popen(argv, **kw))
            except BaseException as exc:  # handed back to the caller's thread
                done.set_exception(exc)


_spawner = _Spawner()


class Proc:
    """One subprocess with its output captured to a file, started in ``cwd`` (None: the runner's)."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log_path: str,
                 cwd: str | None = None) -> None:
        self.label, self.argv, self.env, self.log_path, self.cwd = label, argv, env, log_path, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        if self.alive:
            return
        log = open(self.log_path, "ab")
        try:
            self.popen = _spawner.popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self._running() is not None

    def _running(self) -> subprocess.Popen | None:
        """The process while it runs, else None."""
        popen = self.popen
        return popen if popen is not None and popen.poll() is None else None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def signal(self, sig: int) -> None:
        if (popen := self._running()) is not None:
            popen.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; returns the exit code."""
        self.terminate()
        return self.wait_stopped(timeout)

    def terminate(self) -> None:
        """Ask it to leave, without waiting (so a cluster can stop every node at once)."""
        self.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait for the exit that terminate() asked for; SIGKILL if it does not come in time."""
        popen = self.popen
        if popen is None:
            return None
        try:
            return popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            return popen.wait(timeout)

    def kill(self) -> None:
        if (popen := self._running()) is not None:
            popen.kill()
            popen.wait(STOP_TIMEOUT)

    def logs(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Node:
    """A handle on one node: its daemon, its web process and the ways to hurt them."""

    def __init__(self, cluster: "LocalCluster", name: str, web: bool, clock_offset_s: float = 0.0) -> None:
        self.cluster = cluster
        self.name = name
        self.port = free_port() if web else None
        self.url = f"http://127.0.0.1:{self.port}" if web else ""
        self.clock_file = os.path.join(cluster.dir, f"{name}.faketime")
        self._clock_offset_s = 0.0
        self._faked = False  # runs under libfaketime: from the first non-zero offset or set_clock on
        self._clock_written_at = time.monotonic()
        self.extra_env: dict[str, str] = {}  # this node's own settings (fixed ports, say), from its next start on
        if clock_offset_s != 0:
            self._write_clock(clock_offset_s)
        env = self._env()
        logs = cluster.dir
        py = [sys.executable, "-m", "logonmesh"]
        self.daemon = Proc(f"{name} daemon", py + ["daemon"], env, os.path.join(logs, f"{name}.daemon.log"))
        # --port last: _rebind_web replaces it
        self.web = (Proc(f"{name} web", py + ["web", "--app", cluster.app, "--port", str(self.port)], env,
                         os.path.join(logs, f"{name}.web.log"), cwd=cluster.cwd) if web else None)
        self.client = DaemonClient(os.path.join(cluster.run_dir, f"{name}.ipc"), cluster.cookie.encode(),
                                   name="harness")
        self.paused = False
        self._port_retries = 0

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.url or 'no web'}>"

    # ---- its wall clock -----------------------------------------------------

    @property
    def clock_offset_s(self) -> float:
        """How far this node's wall clock is from the real one, in seconds (positive: ahead)."""
        return self._clock_offset_s

    def set_clock(self, offset_s: float, wait: bool = True) -> None:
        """Step this node's wall clock to ``offset_s`` seconds from the real one, as an NTP step would.

        A running node takes the step within libfaketime's re-read period (at
        most 2 s); with ``wait`` this returns once the daemon (its ``wall_ms``)
        and the web (its Date header) show it.  A stopped node starts with the
        new offset.  Only a node under libfaketime can be stepped while it
        runs: one started without an offset has none, so stepping it is refused
        with a clear error (stop it, set the clock, start it).
        """
        faketime_spec(offset_s)
        if not self._faked and any(p.alive for p in self.procs):
            if offset_s == 0:
                return
            raise ClockSkewUnavailable(f"{self.name} runs without libfaketime (it was started with no clock "
                                       "offset): stop it, set_clock, then start it")
        step_s = abs(offset_s - self._clock_offset_s)
        self._write_clock(offset_s)
        if wait and self.running:
            self.wait_clock(step_s)

    def wait_clock(self, step_s: float = math.inf, timeout: float = CLOCK_WAIT_S) -> None:
        """Until both processes show the clock's offset; a step too small to see, until libfaketime re-read it."""
        eventually(lambda: self._assert_clock_shown(step_s), timeout=timeout, interval=0.1)

    def _env(self) -> dict[str, str]:
        """The processes' environment: the cluster's, with libfaketime only for a node that was ever skewed."""
        env = dict(self.cluster.env, LOGONMESH_NODE=self.name, **self.extra_env)
        if self._faked:
            preload = env.get("LD_PRELOAD", "")
            env.update(LD_PRELOAD=f"{libfaketime()} {preload}".strip(), FAKETIME_TIMESTAMP_FILE=self.clock_file,
                       FAKETIME_CACHE_DURATION="1",
                       # a real NTP step never moves CLOCK_MONOTONIC (and libfaketime 0.9.10 hangs
                       # threading.Event.wait when it fakes it)
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env

    def _write_clock(self, offset_s: float) -> None:
        """Replace the node's faketime file in one rename, so that libfaketime never reads half of it."""
        spec = faketime_spec(offset_s)
        libfaketime()  # fail here, with the fix, rather than at the node's start
        tmp = f"{self.clock_file}.tmp"
        with open(tmp, "w") as f:
            f.write(spec + "\n")
        os.replace(tmp, self.clock_file)
        self._clock_offset_s = float(offset_s)
        self._faked = True
        self._clock_written_at = time.monotonic()

    def _assert_clock_shown(self, step_s: float) -> None:
        """The daemon's wall_ms and the web's Date header show the offset, each where it can tell."""
        reread = time.monotonic() - self._clock_written_at >= FAKETIME_REREAD_S
        before = time.time()
        wall_ms = self.call("status").get("wall_ms")
        after = time.time()
        if wall_ms is None or step_s <= DAEMON_CLOCK_TOLERANCE_S:
            assert reread, f"{self.name}: waiting for libfaketime to re-read {self.clock_file}"
        else:
            _assert_offset(f"{self.name} daemon", wall_ms / 1000, before, after, self._clock_offset_s,
                           DAEMON_CLOCK_TOLERANCE_S)
        if self.web is None:
            return
        before = time.time()
        date = requests.get(f"{self.url}/healthz", timeout=2).headers["Date"]
        after = time.time()
        if step_s <= WEB_CLOCK_TOLERANCE_S:
            assert reread, f"{self.name}: waiting for libfaketime to re-read {self.clock_file}"
        else:  # whole seconds: the web's clock was up to 1 s later than its Date
            _assert_offset(f"{self.name} web", email.utils.parsedate_to_datetime(date).timestamp(), before - 1,
                           after, self._clock_offset_s, WEB_CLOCK_TOLERANCE_S)

    def _rebind_web(self) -> bool:
        """On first start only: if another socket took the free port we picked, try another one.

        The port is free when picked and bound a moment later by the web; in
        between, any process (a daemon binding port 0, an outgoing connection)
        may take it.  Returns False when the web died of something else.
        """
        web = self.web
        if web is None or web.alive or self._port_retries >= PORT_RETRIES or \
                f"cannot listen on 127.0.0.1:{self.port}" not in web.logs():
            return False
        self._port_retries += 1
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        web.argv = web.argv[:-1] + [str(self.port)]
        web.start()
        return True

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.daemon, self.web) if p is not None]

    @property
    def running(self) -> bool:
        return self.daemon.alive and not self.paused

    @property
    def pids(self) -> list[int]:
        """The pids of its live processes (what a cleanup check looks for afterwards)."""
        return [p.pid for p in self.procs if p.alive and p.pid is not None]

    def start(self) -> None:
        """Start whichever of its processes are not running, with the node's current clock offset."""
        env = self._env()
        for proc in self.procs:
            if not proc.alive:
                proc.env = env
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
        """Stop (if it still runs) and start again; a partition it was in is applied again once it answers."""
        self.stop()
        self.start()
        if wait:
            self.cluster.wait_ready([self])

    def pause(self) -> None:
        """SIGSTOP: the node is frozen, its sockets open but silent.

        Every node writes to the one shared SQLite file (the registry refresh on
        each heartbeat, sign-ups).  Frozen in the middle of such a write, a
        daemon would keep the database's write lock for as long as it stays
        frozen, and every other node's sign-ups, registry refreshes and starts
        would fail with "database is locked": a real property of the shared
        file, but not what a pause is for (a node silent on the network).  So
        the harness freezes it, checks that the write lock is free, and if it
        is not, lets the node finish its write and freezes it again.
        """
        for _ in range(PAUSE_ATTEMPTS):
            for proc in self.procs:
                proc.signal(signal.SIGSTOP)
            self.paused = True
            eventually(lambda: all(_frozen(p.pid) for p in self.procs if p.alive), timeout=STOP_TIMEOUT,
                       interval=0.001)
            if self.cluster.db_writable():
                return
            for proc in self.procs:
                proc.signal(signal.SIGCONT)
            self.paused = False
        raise RuntimeError(f"{self.name} could not be frozen outside a write to {self.cluster.db}")

    def resume(self) -> None:
        """SIGCONT; a cut made while it was frozen is applied to it now, since it could not hear it then."""
        for proc in self.procs:
            proc.signal(signal.SIGCONT)
        self.paused = False
        self.cluster._catch_up(self, fresh=False)

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
        """The daemon answers, and so does the web (its /healthz says 200, or the app has no /healthz).

        The demo's /healthz asks the daemon itself; an app of the user's may
        have no such route (404), and then any answer of the web will do,
        beside the daemon's own.
        """
        if self.web is not None:
            try:
                status = requests.get(f"{self.url}/healthz", timeout=2).status_code
            except requests.RequestException:
                return False
            if status != 404:
                return status == 200
        try:
            self.call("ping")
            return True
        except DaemonUnavailable:
            return False


DEFAULT_APP: str = config.OPTIONS_BY_NAME["app"].default  # the demo


class LocalCluster:
    """Nodes sharing one temporary directory: the cluster database, the cookie and the run dir.

    Every node's web serves ``app`` (MODULE:FACTORY, as ``logonmesh web --app``
    takes it; default: the demo), started in ``cwd`` (default: the working
    directory when the cluster is made), so the test's own app module imports
    from there, before anything installed.
    """

    def __init__(self, heartbeat_ms: int = 100, down_after: int = 3, discovery_ms: int = 200,
                 ready_timeout: float = 20.0, env: dict[str, str] | None = None, app: str | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.app, self.cwd = _app_and_cwd(app or (env or {}).get("LOGONMESH_APP") or DEFAULT_APP, cwd)
        # /tmp, not a deep pytest tmp_path: ipc paths must stay under ~107 bytes.
        _sweep_orphaned_dirs()
        self.dir = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=DIR_PARENT)
        with open(os.path.join(self.dir, OWNER_FILE), "w") as f:
            f.write(str(os.getpid()))
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
        self._counters: dict[str, Iterator[int]] = {}
        self._cut: dict[str, set[str]] = {}  # node name -> the peers it must not hear or reach
        self._missed: set[str] = set()       # nodes that were not running when the cut last changed
        _live_clusters.add(self)

    # ---- life -----------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            sys.stderr.write(self.all_logs())
        self.close()

    def close(self) -> None:
        """Stop every process and remove the directory; safe to call twice.

        Every web gets SIGTERM at once, then every daemon, so five nodes take as
        long to stop as one.  The directory goes whatever happens; the cluster
        stays on the atexit list until every process is known to be gone, so a
        second Ctrl-C in the middle of this still leaves nothing behind.
        """
        try:
            for layer in ([n.web for n in self.nodes], [n.daemon for n in self.nodes]):
                procs = [p for p in layer if p is not None]
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait_stopped()
            for node in self.nodes:
                node.paused = False
                node.client.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        _live_clusters.discard(self)

    def all_logs(self) -> str:
        return "".join(node.logs() for node in self.nodes)

    def start_nodes(self, prefix: str, n: int, web: bool = True, wait: bool = True,
                    clock_offset_s: float = 0.0) -> list[Node]:
        """Start n more nodes named prefix1, prefix2, … (numbering goes on across calls).

        ``clock_offset_s`` skews their wall clocks, the daemon's and the web's,
        by that many seconds (positive: ahead); Node.set_clock steps one later.
        """
        faketime_spec(clock_offset_s)
        counter = self._counters.setdefault(prefix, itertools.count(1))
        new = [Node(self, f"{prefix}{next(counter)}", web, clock_offset_s) for _ in range(n)]
        self.nodes.extend(new)
        for node in new:
            node.start()
        if wait:
            self.wait_ready(new, _first_start=True)
        return new

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_ready(self, nodes: Sequence[Node] | None = None, timeout: float | None = None,
                   _first_start: bool = False) -> None:
        """Until each node is healthy and sees up every live node that the current cut lets it see.

        A node that is (re)started while a partition stands is put back into it
        as soon as its daemon answers.  A process that exits meanwhile ends the
        wait at once with its log, rather than after the whole timeout.
        """
        nodes = list(nodes or self.live())
        pending_cut = {n.name for n in nodes if self._cut.get(n.name)}

        def ready() -> None:
            for node in nodes:
                for proc in node.procs:
                    if not proc.alive and not (_first_start and proc is node.web and node._rebind_web()):
                        raise _ProcessExited(f"{proc.label} exited with {proc.popen and proc.popen.returncode}:\n"
                                             f"{proc.logs()[-2000:]}")
                if node.name in pending_cut:
                    self._catch_up(node, fresh=True)
                    pending_cut.discard(node.name)
                assert node.healthy(), f"{node.name} is not healthy yet"
                self.assert_sees(node, self.reachable(node))

        try:
            eventually(ready, timeout=timeout or self.ready_timeout, interval=0.05)
        except _ProcessExited as exc:
            raise RuntimeError(str(exc)) from None

    def reachable(self, node: Node) -> list[Node]:
        """The other live nodes that the current cut lets this node exchange messages with."""
        mine = self._cut.get(node.name, set())
        return [o for o in self.live() if o is not node and o.name not in mine
                and node.name not in self._cut.get(o.name, set())]

    def views(self) -> dict[str, set[str]]:
        """Each live node's own answer to "who is up?": what a test asserts a partition against."""
        return {n.name: set(n.peers_up()) for n in self.live()}

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
        sides = [set(g) for g in groups]
        rest = set(self.nodes) - set().union(*sides)
        if rest:
            sides.append(rest)
        self._set_cut({node: set().union(*(g for g in sides if node in g)) for node in self.nodes})

    def isolate(self, node: Node) -> None:
        self.partition([node])

    def halves(self) -> tuple[list[Node], list[Node]]:
        nodes = list(self.nodes)
        half = len(nodes) // 2
        self.partition(nodes[:half], nodes[half:])
        return nodes[:half], nodes[half:]

    def majorities_ring(self) -> dict[Node, list[Node]]:
        """Each node sees a majority (itself and its nearest ring neighbours); no two see the same set.

        Returns, for each node, the other nodes it still sees (its ring neighbours).
        """
        nodes = list(self.nodes)
        n = len(nodes)
        reach = (n // 2) // 2 + (n // 2) % 2  # neighbours on each side, so 1 + 2*reach > n/2
        groups = {nodes[i]: {nodes[(i + d) % n] for d in range(-reach, reach + 1)} for i in range(n)}
        self._set_cut(groups)
        return {node: [o for o in nodes if o in group and o is not node] for node, group in groups.items()}

    def bridge(self) -> tuple[list[Node], Node, list[Node]]:
        """Two halves that cannot see each other, and one node in the middle that sees both."""
        nodes = list(self.nodes)
        mid = len(nodes) // 2
        left, bridge, right = nodes[:mid], nodes[mid], nodes[mid + 1:]
        self.partition(left + [bridge], [bridge] + right)
        return left, bridge, right

    def heal(self) -> None:
        """Lift every cut and every loss setting (a paused node gets the heal when it resumes)."""
        self._cut = {}
        self._missed = {n.name for n in self.nodes if not n.running}
        for node in self.live():
            node.call("heal")

    def _set_cut(self, allowed: dict[Node, set[Node]]) -> None:
        """Remember who may talk to whom, then tell every running daemon whom to drop."""
        self._cut = {node.name: {o.name for o in self.nodes if o not in allowed[node]} for node in allowed}
        self._missed = {n.name for n in self.nodes if not n.running}
        for node in self.live():
            self._catch_up(node, fresh=True)

    def _catch_up(self, node: Node, fresh: bool) -> None:
        """Give one daemon the cluster's current cut.

        ``fresh`` is a daemon that starts with no cut and no loss (just
        started), so only a standing cut matters; a resumed one may also have
        missed a heal while it was frozen.
        """
        blocked = self._cut.get(node.name)
        if blocked is not None:
            node.call("partition", peers=sorted(blocked), replace=True)
        elif not fresh and node.name in self._missed:
            node.call("heal")
        self._missed.discard(node.name)

    def lossy(self, node: Node, fraction: float) -> None:
        node.call("lossy", fraction=float(fraction))

    def db_writable(self, timeout: float = 0.25) -> bool:
        """Whether a writer can take the cluster database's write lock within ``timeout`` seconds."""
        if not os.path.exists(self.db):
            return True
        conn = sqlite3.connect(self.db, timeout=timeout, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            conn.close()

    def converged(self) -> bool:
        """True when every running node reports the same cache digest."""
        try:
            digests = {node.status()["digest"] for node in self.live()}
        except DaemonUnavailable:
            return False
        return len(digests) == 1


def _app_and_cwd(app: str, cwd: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Check both before anything is made: a typo is a ValueError here, not a web that dies at start."""
    try:
        config.OPTIONS_BY_NAME["app"].parse(app)
    except ValueError as exc:
        raise ValueError(f"LocalCluster(app=...): {exc}") from None
    where = os.path.abspath(os.getcwd() if cwd is None else cwd)
    if not os.path.isdir(where):
        raise ValueError(f"LocalCluster(cwd=...): {where} is not a directory")
    return app, where


class _InputParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input":
            a = dict(attrs)
            name = a.get("name")
            if name:
                self.fields[name] = a.get("value") or ""


class Browser:
    """A requests session that acts like a person's browser on a node's pages.

    It keeps cookies (which, as in a real browser, ignore the port, so every
    local node sees the same session cookie) and fills ``csrf_token`` from the
    last HTML page it fetched.  Redirects are not followed, so a test sees
    every 302.  The paths of the app's pages are parameters, the demo's by
    default: ``login`` gets then posts ``login_path``, ``signup`` the same with
    ``signup_path``, ``logout`` gets ``protected_path`` (for a CSRF token)
    then posts ``logout_path``, and ``authenticated`` is whether
    ``protected_path`` answers 200.
    """

    def __init__(self, url: str, session: requests.Session | None = None, timeout: float = 5.0, *,
                 login_path: str = "/", logout_path: str = "/logout", protected_path: str = "/budget",
                 signup_path: str = "/signup") -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.login_path, self.logout_path = login_path, logout_path
        self.protected_path, self.signup_path = protected_path, signup_path
        self.csrf_token: str | None = None
        self.last: requests.Response | None = None

    def at(self, url: str) -> "Browser":
        """The same browser (same cookies, same paths) pointed at another node."""
        other = Browser(url, self.session, self.timeout, login_path=self.login_path, logout_path=self.logout_path,
                        protected_path=self.protected_path, signup_path=self.signup_path)
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

    def get_json(self, path: str, **kw: Any) -> requests.Response:
        """GET as a script would, preferring JSON (``Accept: application/json``): a 401, not a redirect."""
        kw["headers"] = {"Accept": "application/json", **(kw.get("headers") or {})}
        return self.get(path, **kw)

    def post_form(self, path: str, data: dict[str, str] | None = None, csrf: bool = True,
                  **kw: Any) -> requests.Response:
        data = dict(data or {})
        if csrf and "csrf_token" not in data and self.csrf_token:
            data["csrf_token"] = self.csrf_token
        kw.setdefault("allow_redirects", False)
        return self._remember(self.session.post(self.url + path, data=data, timeout=self.timeout, **kw))

    def signup(self, username: str, password: str) -> requests.Response:
        self.get(self.signup_path)
        return self.post_form(self.signup_path, {"username": username, "password": password})

    def login(self, username: str, password: str) -> requests.Response:
        self.get(self.login_path)
        return self.post_form(self.login_path, {"username": username, "password": password})

    def logout(self) -> requests.Response:
        self.get(self.protected_path)
        return self.post_form(self.logout_path)

    def authenticated(self) -> bool:
        """Whether ``protected_path`` on this node serves the page (not a redirect to the login)."""
        return self.get(self.protected_path).status_code == 200


def _assert_offset(label: str, seen_s: float, before_s: float, after_s: float, offset_s: float,
                   tolerance_s: float) -> None:
    """A clock read between ``before_s`` and ``after_s`` (the harness's clock) shows ``offset_s``, give or take."""
    low, high = before_s + offset_s - tolerance_s, after_s + offset_s + tolerance_s
    assert low <= seen_s <= high, \
        f"{label}: clock at {seen_s - (before_s + after_s) / 2:+.3f} s from the harness's, want {offset_s:+.3f} s"


def _frozen(pid: int | None) -> bool:
    """True when every thread of the process is stopped (SIGSTOP has taken effect, not just been sent)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True  # gone: nothing of it runs
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


class _ProcessExited(Exception):
    """A node's process died while we waited for it to be ready: no point waiting longer."""


DIR_PARENT = "/tmp"
DIR_PREFIX = "lm-"
OWNER_FILE = "owner.pid"


def _sweep_orphaned_dirs() -> None:
    """Remove cluster directories whose owning test process is gone.

    Nothing else can clean up after a runner killed with SIGKILL or ended by
    os._exit (pytest-timeout's thread method): the parent-death signal takes
    its nodes, but their directory stays.  The next cluster removes it.
    """
    for path in glob.glob(os.path.join(DIR_PARENT, DIR_PREFIX + "*")):
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            with open(os.path.join(path, OWNER_FILE)) as f:
                owner = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if owner > 0 and not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _close_leftovers() -> None:
    for cluster in list(_live_clusters):
        cluster.close()
