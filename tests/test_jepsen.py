"""Jepsen-style tests: random clients, a nemesis, a history, and a checker (issue 14).

Each test runs a 3-node cluster on the real harness (daemons and webs, HTTP
through ``Browser``).  Client workers do random operations against random
nodes: sign-ups, logins, logouts, budget entries added (the web's form) and
deleted (the daemon's ``record_delete``: the demo has no delete page), and
wrong-password logins against a few "victim" users.  Each operation goes into
the HISTORY when it is invoked and gets its outcome when it completes: ``ok``
(acknowledged), ``fail`` (definitely not done: a refusal, a form error) or
``unknown`` (a timeout, a 5xx: it may or may not have happened).  Meanwhile a
NEMESIS cuts and heals the network (isolating a node, or bridging two sides
through one) and, in the clock tests, runs one node with its wall clock
minutes off, or steps it while it runs.

After a final heal, the CHECKER waits (with a deadline) until every claim
holds on every node, and fails with the claims that never did, each with the
history lines about it:

- every acknowledged sign-up logs in, and the session it makes is served by
  every node (the promise on the budget page);
- every acknowledged session that was not logged out is served by every node;
- every acknowledged budget entry, unless acknowledged deleted, is on its
  user's page on every node, and no acknowledged-deleted one is;
- every acknowledged logout holds on every node: the cookie that was logged
  out, and a copy of it taken before the logout (the real test of
  revocation), are both refused (302 to the login);
- a victim with at least the throttle's limit of acknowledged failures gets
  429 on every node, with a Retry-After no longer than the window;
- every daemon ends with the same digest.

Normal users log in only on a node whose daemon already holds them (asked over
ipc first), so their logins never fail and the failure counts are the
victims' alone.  Clients reuse the cookie of their login for every request, so
a node that refuses a session cannot make the client forget it.

The randomness is seeded (``LOGONMESH_JEPSEN_SEED`` repeats a run's schedule of
operations and faults; thread timing still differs) and every failure names
the seed.  The clock tests fail on a code base where issue 14 is open: that is
a correctness failure, not a flaky test, and the failure message says so.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

import pytest
import requests
from requests.cookies import RequestsCookieJar

from logonmesh.daemon.client import DaemonError, DaemonUnavailable
from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import Browser, LocalCluster, Node, eventually

SEED_ENV = "LOGONMESH_JEPSEN_SEED"
WORKERS = 4
USERS_PER_WORKER = 2
VICTIMS = 2
THROTTLE_USER = 3
THROTTLE_WINDOW_S = 120          # longer than a test, so no acknowledged failure leaves the window before the check
RETRY_AFTER_SLACK_S = 2          # Retry-After may exceed the window by this much (rounding up, a slow check)
WORKLOAD_S = 12.0
NEMESIS_PERIOD_S = (1.0, 2.5)    # how long each fault (or calm) lasts
SETTLE_S = 12.0                  # how long the checker waits after the final heal for every claim to hold
HTTP_TIMEOUT_S = 3.0
THINK_S = 0.05                   # a client's pause between operations, at most
PASSWORD = "correct horse battery"
WRONG_PASSWORD = "not the password"
WRONG_LOGIN = "Wrong username or password."
COOKIE = "logonmesh"             # the web's session cookie (SESSION_COOKIE_NAME)
CLUSTER_ENV = {"LOGONMESH_THROTTLE_USER": str(THROTTLE_USER),
               "LOGONMESH_THROTTLE_ADDR": "1000000",  # every client is 127.0.0.1: only the per-user limit is tested
               "LOGONMESH_THROTTLE_WINDOW": str(THROTTLE_WINDOW_S)}
MAX_REPORT_LINES = 400


# ---- the history -------------------------------------------------------------------

@dataclass
class Op:
    """One operation as a client saw it: invoked, then completed with an outcome."""

    index: int
    t: float
    process: str
    kind: str
    node: str
    subjects: tuple[str, ...]   # the user, the session, the entry it is about: what a violation is looked up by
    args: str
    outcome: str = "pending"    # ok | fail | unknown
    detail: str = ""

    def line(self) -> str:
        return (f"{self.index:5d} {self.t:7.3f}s {self.process:<7} {self.kind:<10} {self.node:<4} {self.args:<44} "
                f"-> {self.outcome} {self.detail}")


class History:
    """Every operation, in the order invoked; safe to use from every client thread."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def invoke(self, process: str, kind: str, node: str, subjects: tuple[str, ...], args: str) -> Op:
        with self._lock:
            op = Op(len(self._ops), time.monotonic() - self._t0, process, kind, node, subjects, args)
            self._ops.append(op)
            return op

    def ops(self, kind: str | None = None, outcome: str | None = None) -> list[Op]:
        with self._lock:
            return [o for o in self._ops if (kind is None or o.kind == kind)
                    and (outcome is None or o.outcome == outcome)]

    def about(self, *subjects: str) -> list[Op]:
        return [o for o in self.ops() if set(subjects) & set(o.subjects)]

    def summary(self) -> str:
        counts = Counter((o.kind, o.outcome) for o in self.ops() if o.process != "nemesis")
        kinds = sorted({k for k, _ in counts})
        return "; ".join(f"{k} " + "/".join(f"{counts[k, out]} {out}" for out in ("ok", "fail", "unknown"))
                         for k in kinds)


def outcome(resp: requests.Response, ok: Callable[[requests.Response], bool],
            fail: Callable[[requests.Response], bool]) -> tuple[str, str]:
    """ok, fail, or unknown for anything else (a 5xx above all): what a client can tell from one answer."""
    detail = f"{resp.status_code} {resp.headers.get('Location', '')}".strip()
    if ok(resp):
        return "ok", detail
    if resp.status_code >= 500 or not fail(resp):
        return "unknown", detail
    return "fail", detail


def redirects(status: int, location: str) -> Callable[[requests.Response], bool]:
    return lambda r: r.status_code == status and r.headers.get("Location") == location


def status_in(*codes: int) -> Callable[[requests.Response], bool]:
    return lambda r: r.status_code in codes


def token_of(jar: RequestsCookieJar) -> str:
    """The daemon token in a session cookie (which is signed, not encrypted), shortened, for the history."""
    raw = jar.get(COOKIE) or ""
    try:
        payload = raw.lstrip(".").split(".")[0]
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        token = json.loads(zlib.decompress(data) if raw.startswith(".") else data).get("token")
    except (ValueError, zlib.error, AttributeError):
        return "?"
    return token[:8] if isinstance(token, str) else "-"


# ---- the clients -------------------------------------------------------------------

@dataclass
class Session:
    """A login a client made: the cookie the login answered with, and what became of it."""

    id: str
    user: str
    node: str
    jar: RequestsCookieJar
    csrf: str | None
    token: str
    state: str = "live"                      # live | logged_out | unknown
    logged_out: RequestsCookieJar | None = None   # the cookie as the logout left it


@dataclass
class Model:
    """What the clients were told, which is all the checker may rely on."""

    signed_up: set[str] = field(default_factory=set)
    sessions: list[Session] = field(default_factory=list)
    entries: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (user, added|unknown)
    deletes: dict[str, str] = field(default_factory=dict)             # label -> ok|unknown (attempted ones)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client:
    """One worker: a few users of its own, their sessions and entries, and random operations on random nodes."""

    def __init__(self, number: int, rng: random.Random, nodes: list[Node], history: History, model: Model,
                 victims: list[str]) -> None:
        self.name = f"w{number}"
        self.rng, self.nodes, self.history, self.model, self.victims = rng, nodes, history, model, victims
        self.users = [f"u{number}x{i}" for i in range(USERS_PER_WORKER)]
        self.http = requests.Session()
        self.counter = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.rng.uniform(0, THINK_S))
        self.http.close()

    def step(self) -> None:
        """One operation: sign up first, then a weighted choice among what this client's state allows."""
        with self.model.lock:  # the other clients write to the model meanwhile
            unsigned = [u for u in self.users if u not in self.model.signed_up]
            live = [s for s in self.model.sessions if s.state == "live" and s.user in self.users]
            mine = [label for label, (user, state) in self.model.entries.items()
                    if user in self.users and state == "added" and label not in self.model.deletes]
        choices: list[tuple[float, Callable[[], None]]] = [(1.0, self.wrong_login)]
        if unsigned:
            choices.append((3.0, lambda: self.signup(self.rng.choice(unsigned))))
        if len(unsigned) < len(self.users):
            choices.append((2.0, self.login))
        if live:
            choices += [(3.0, lambda: self.add_entry(self.rng.choice(live))),
                        (1.5, lambda: self.logout(self.rng.choice(live)))]
        if mine:
            choices.append((0.7, lambda: self.delete_entry(self.rng.choice(mine))))
        weights, actions = zip(*choices)
        self.rng.choices(actions, weights)[0]()

    def browser(self, node: Node, jar: RequestsCookieJar | None, csrf: str | None = None) -> Browser:
        """A browser on ``node`` with a copy of ``jar`` (no answer can change the client's own cookie)."""
        self.http.cookies = jar.copy() if jar is not None else RequestsCookieJar()
        b = Browser(node.url, self.http, timeout=HTTP_TIMEOUT_S)
        b.csrf_token = csrf
        return b

    def _do(self, kind: str, node: Node, subjects: tuple[str, ...], args: str,
            act: Callable[[], tuple[str, str]]) -> Op:
        op = self.history.invoke(self.name, kind, node.name, subjects, args)
        try:
            op.outcome, op.detail = act()
        except (requests.RequestException, DaemonUnavailable) as exc:
            op.outcome, op.detail = "unknown", type(exc).__name__
        except DaemonError as exc:  # the daemon answered: it refused
            op.outcome, op.detail = "fail", exc.code
        return op

    def signup(self, user: str) -> None:
        node = self.rng.choice(self.nodes)
        b = self.browser(node, None)
        op = self._do("signup", node, (user,), f"user={user}", lambda: outcome(
            b.signup(user, PASSWORD), ok=redirects(302, "/"), fail=status_in(200, 400)))
        if op.outcome == "ok":
            with self.model.lock:
                self.model.signed_up.add(user)

    def login(self) -> None:
        """A fresh browser logs in, on a node whose daemon holds the user already (so it never fails for that)."""
        with self.model.lock:
            user = self.rng.choice(sorted(set(self.users) & self.model.signed_up))
        node = self.rng.choice(self.nodes)
        try:
            if node.call("user", username=user) is None:
                return
        except (DaemonUnavailable, DaemonError):
            return
        self.counter += 1
        sid = f"{self.name}s{self.counter}"
        b = self.browser(node, None)
        op = self._do("login", node, (user, sid), f"user={user} session={sid}", lambda: outcome(
            b.login(user, PASSWORD), ok=redirects(302, "/budget"), fail=status_in(200, 400, 429)))
        if op.outcome == "ok":
            jar, csrf = self.follow_login(b)
            op.args += f" token={token_of(jar)}"
            with self.model.lock:
                self.model.sessions.append(Session(sid, user, node.name, jar, csrf, token_of(jar)))

    def follow_login(self, b: Browser) -> tuple[RequestsCookieJar, str | None]:
        """Follow the login's redirect, as a browser does: the session's cookie and its forms' csrf_token.

        A login renews the session's CSRF secret (the login page's token no
        longer fits), and the page after it may write the new secret into the
        cookie.  If that page is not served, the login's own cookie is kept.
        """
        jar = self.http.cookies.copy()
        b.csrf_token = None
        try:
            if b.get("/budget").status_code == 200:
                return self.http.cookies.copy(), b.csrf_token
        except requests.RequestException:
            pass
        return jar, None

    def logout(self, session: Session) -> None:
        node = self.rng.choice(self.nodes)
        b = self.browser(node, session.jar, session.csrf)
        op = self._do("logout", node, (session.user, session.id),
                      f"user={session.user} session={session.id} token={session.token}", lambda: outcome(
                          b.post_form("/logout"), ok=redirects(302, "/"), fail=status_in(400)))
        if op.outcome == "ok":
            session.logged_out = self.http.cookies.copy()
            session.state = "logged_out"
        elif op.outcome == "unknown":
            session.state = "unknown"

    def add_entry(self, session: Session) -> None:
        node = self.rng.choice(self.nodes)
        self.counter += 1
        label = f"{self.name}e{self.counter}"
        amount = f"{self.rng.choice('+-')}{self.rng.randint(1, 999)}.{self.rng.randint(0, 99):02d}"
        b = self.browser(node, session.jar, session.csrf)
        op = self._do("add", node, (session.user, session.id, label),
                      f"user={session.user} session={session.id} entry={label}", lambda: outcome(
                          b.post_form("/budget", {"label": label, "amount": amount}),
                          ok=redirects(303, "/budget"), fail=status_in(200, 302, 400)))
        if op.outcome != "fail":
            with self.model.lock:
                self.model.entries[label] = (session.user, "added" if op.outcome == "ok" else "unknown")

    def delete_entry(self, label: str) -> None:
        """As an app's delete would: find the entry's key on a node's daemon, and delete it there."""
        user = self.model.entries[label][0]
        node = self.rng.choice(self.nodes)

        def act() -> tuple[str, str]:
            items = node.call("record_items", namespace="budget", prefix=f"{user}/")["items"]
            keys = [i["key"] for i in items if isinstance(i["value"], dict) and i["value"].get("label") == label]
            if not keys:
                return "fail", "not on this node yet"
            try:
                node.call("record_delete", namespace="budget", key=keys[0])
            except DaemonError as exc:
                return "fail", exc.code
            return "ok", keys[0][-8:]

        with self.model.lock:
            self.model.deletes[label] = "pending"
        op = self._do("delete", node, (user, label), f"user={user} entry={label}", act)
        with self.model.lock:
            if op.outcome == "fail":
                del self.model.deletes[label]
            else:
                self.model.deletes[label] = op.outcome

    def wrong_login(self) -> None:
        victim = self.rng.choice(self.victims)
        node = self.rng.choice(self.nodes)
        b = self.browser(node, None)
        self._do("badlogin", node, (victim,), f"user={victim}", lambda: outcome(
            b.login(victim, WRONG_PASSWORD), ok=lambda r: r.status_code == 200 and WRONG_LOGIN in r.text,
            fail=status_in(400, 429)))


# ---- the nemesis -------------------------------------------------------------------

@dataclass
class ClockStep:
    """Step ``node``'s clock to ``offset_s`` once ``at_s`` seconds of the workload have passed."""

    node: str
    at_s: float
    offset_s: float


class Nemesis:
    """Cuts and heals, at random, for the length of the workload; and the clock steps it was given."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, history: History, target: str | None,
                 steps: list[ClockStep]) -> None:
        self.cluster, self.rng, self.history, self.target, self.steps = cluster, rng, history, target, steps

    def run(self, stop: threading.Event) -> None:
        started = time.monotonic()
        pending = sorted(self.steps, key=lambda s: s.at_s)
        while not stop.wait(self.rng.uniform(*NEMESIS_PERIOD_S)):
            while pending and time.monotonic() - started >= pending[0].at_s:
                step = pending.pop(0)
                self._record("clock", step.node, f"step to {step.offset_s:+.0f} s",
                             lambda: self.cluster.node(step.node).set_clock(step.offset_s, wait=False))
            self.fault()

    def fault(self) -> None:
        nodes = list(self.cluster.nodes)
        kind = self.rng.choice(["isolate", "isolate", "bridge", "heal"])
        if kind == "isolate":
            # the skewed node half of the time: sessions made on it while cut off, logouts elsewhere
            victim = self.cluster.node(self.target) if self.target and self.rng.random() < 0.5 \
                else self.rng.choice(nodes)
            self._record("isolate", victim.name, "", lambda: self.cluster.isolate(victim))
        elif kind == "bridge":
            a, mid, b = self.rng.sample(nodes, 3)
            self._record("bridge", mid.name, f"{a.name}-{mid.name}-{b.name}",
                         lambda: self.cluster.partition([a, mid], [mid, b]))
        else:
            self._record("heal", "*", "", self.cluster.heal)

    def _record(self, kind: str, node: str, args: str, act: Callable[[], None]) -> None:
        op = self.history.invoke("nemesis", kind, node, ("nemesis",), args)
        try:
            act()
            op.outcome = "ok"
        except (DaemonUnavailable, DaemonError) as exc:
            op.outcome, op.detail = "unknown", str(exc)[:80]


# ---- the checker ------------------------------------------------------------------

@dataclass
class Claim:
    """One thing that must hold after the heal; ``check`` returns None when it holds, else why not."""

    what: str
    subjects: tuple[str, ...]
    check: Callable[[], str | None]
    why: str | None = "not checked yet"
    kinds: tuple[str, ...] = ()   # the operations of its history that bear on it (none named: all)


def entry_labels(page: requests.Response) -> set[str]:
    return set(re.findall(r'<td class="label-cell">([^<]*)<', page.text))


def serves(node: Node, jar: RequestsCookieJar, user: str) -> str | None:
    """None when node serves /budget to this cookie (a copy: the answer cannot change it) as ``user``."""
    s = requests.Session()
    s.cookies = jar.copy()
    with s:
        resp = s.get(f"{node.url}/budget", allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    if resp.status_code != 200 or f'<strong class="username">{user}</strong>' not in resp.text:
        return f"{node.name} answers {resp.status_code} {resp.headers.get('Location', '')}".strip()
    return None


def refuses(node: Node, jar: RequestsCookieJar) -> str | None:
    """None when node sends this cookie (a copy) to the login instead of serving /budget."""
    s = requests.Session()
    s.cookies = jar.copy()
    with s:
        resp = s.get(f"{node.url}/budget", allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    if (resp.status_code, resp.headers.get("Location")) != (302, "/"):
        return f"{node.name} answers {resp.status_code} {resp.headers.get('Location', '')}: still logged in"
    return None


def login_claim(node: Node, user: str, nodes: list[Node], model: Model) -> Claim:
    """The user logs in on ``node``; every node serves that session, with the user's entries as acknowledged."""
    state: dict[str, RequestsCookieJar] = {}
    with model.lock:
        must = {label for label, (u, st) in model.entries.items() if u == user and st == "added"
                and label not in model.deletes}
        gone = {label for label, (u, _) in model.entries.items() if u == user and model.deletes.get(label) == "ok"}

    def check() -> str | None:
        if "jar" not in state:
            b = Browser(node.url, timeout=HTTP_TIMEOUT_S)
            resp = b.login(user, PASSWORD)
            if (resp.status_code, resp.headers.get("Location")) != (302, "/budget"):
                return f"cannot log in on {node.name}: {resp.status_code}"
            state["jar"] = b.session.cookies.copy()
        problems = []
        for other in nodes:
            why = serves(other, state["jar"], user)
            if why:
                problems.append(f"a session made on {node.name} is refused: {why}")
                continue
            s = requests.Session()
            s.cookies = state["jar"].copy()
            with s:
                labels = entry_labels(s.get(f"{other.url}/budget", allow_redirects=False, timeout=HTTP_TIMEOUT_S))
            if must - labels:
                problems.append(f"{other.name} lacks acknowledged entries {sorted(must - labels)}")
            if gone & labels:
                problems.append(f"{other.name} shows deleted entries {sorted(gone & labels)}")
        return "; ".join(problems) or None

    return Claim(f"{user} logs in on {node.name}", (user,), check, kinds=("signup", "add", "delete"))


def claims(cluster: LocalCluster, model: Model, history: History, victims: list[str]) -> list[Claim]:
    nodes = list(cluster.nodes)
    found = [login_claim(node, user, nodes, model) for user in sorted(model.signed_up) for node in nodes]
    for s in model.sessions:
        for node in nodes:
            if s.state == "live":
                found.append(Claim(f"live session {s.id} of {s.user} on {node.name}", (s.id,),
                                   partial(serves, node, s.jar, s.user)))
            elif s.state == "logged_out" and s.logged_out is not None:
                found.append(Claim(f"logout of {s.id} of {s.user} holds on {node.name}, for a copy taken before",
                                   (s.id,), partial(refuses, node, s.jar)))
                found.append(Claim(f"logout of {s.id} of {s.user} holds on {node.name}", (s.id,),
                                   partial(refuses, node, s.logged_out)))
    failures = Counter(op.subjects[0] for op in history.ops("badlogin", "ok"))
    for victim in victims:
        if failures[victim] >= THROTTLE_USER:
            found += [Claim(f"{victim} ({failures[victim]} acknowledged failures) is throttled on {node.name}",
                            (victim,), partial(throttled, node, victim)) for node in nodes]
    found.append(Claim("every daemon has the same digest", ("nemesis",), lambda: digests_agree(cluster)))
    return found


def throttled(node: Node, victim: str) -> str | None:
    """The daemon counts the limit (the web asks the same), then the web answers 429 within the window."""
    count = node.call("failures_count", subjects=[f"user:{victim}"])[f"user:{victim}"]
    if count["n"] < THROTTLE_USER:
        return f"{node.name}'s daemon counts {count['n']} failures in the window"
    resp = Browser(node.url, timeout=HTTP_TIMEOUT_S).login(victim, WRONG_PASSWORD)
    retry_after = int(resp.headers.get("Retry-After", "-1"))
    if resp.status_code != 429:
        return f"{node.name} answers {resp.status_code}, not 429"
    if not 0 < retry_after <= THROTTLE_WINDOW_S + RETRY_AFTER_SLACK_S:
        return f"{node.name} says Retry-After {retry_after} s for a {THROTTLE_WINDOW_S} s window"
    return None


def digests_agree(cluster: LocalCluster) -> str | None:
    digests = {n.name: n.status()["digest"][:12] for n in cluster.nodes}
    return None if len(set(digests.values())) == 1 else f"digests differ: {digests}"


def settle(found: list[Claim]) -> list[Claim]:
    """Check every claim until all hold or SETTLE_S has passed; return the ones that never held."""
    deadline = time.monotonic() + SETTLE_S
    pending = list(found)
    with ThreadPoolExecutor(4) as pool:
        while pending:
            for claim, why in zip(pending, pool.map(_run_claim, pending)):
                claim.why = why
            pending = [c for c in pending if c.why is not None]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    return pending


def _run_claim(claim: Claim) -> str | None:
    try:
        return claim.check()
    except (requests.RequestException, DaemonUnavailable, DaemonError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]


# ---- one run ------------------------------------------------------------------------

@dataclass
class Run:
    """What a test asks for: the skewed node, if any, and the clock steps while the workload runs."""

    title: str
    clock_offset_s: float = 0.0
    steps: list[ClockStep] = field(default_factory=list)


def seed() -> int:
    fixed = os.environ.get(SEED_ENV)
    return int(fixed) if fixed else random.SystemRandom().randrange(2**32)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    with LocalCluster(env=CLUSTER_ENV) as cluster:
        yield cluster


def jepsen(cluster: LocalCluster, run: Run, seed: int) -> None:
    """Start n1, n2 (real clocks) and n3 (skewed, if asked), run clients and the nemesis, heal, and check."""
    cluster.start_nodes("n", 2)
    cluster.start_nodes("n", 1, clock_offset_s=run.clock_offset_s)
    skewed = "n3" if run.clock_offset_s or run.steps else None
    rng = random.Random(seed)
    history, model = History(), Model()
    victims = [f"victim{i}" for i in range(VICTIMS)]
    for victim in victims:
        assert Browser(cluster.nodes[0].url).signup(victim, PASSWORD).status_code == 302
    clients = [Client(i, random.Random(rng.random()), list(cluster.nodes), history, model, victims)
               for i in range(WORKERS)]
    nemesis = Nemesis(cluster, random.Random(rng.random()), history, skewed, run.steps)
    stop = threading.Event()
    errors: list[str] = []
    threads = [threading.Thread(target=guarded, args=(c.name, c.run, stop, errors), name=c.name) for c in clients]
    threads.append(threading.Thread(target=guarded, args=("nemesis", nemesis.run, stop, errors), name="nemesis"))
    for t in threads:
        t.start()
    try:
        stop.wait(WORKLOAD_S)
    finally:
        stop.set()
        for t in threads:
            t.join(HTTP_TIMEOUT_S * 3)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not errors and not stuck, f"seed {seed}: the workload broke: {errors}, still running: {stuck}"
    history.invoke("nemesis", "heal", "*", ("nemesis",), "final").outcome = "ok"
    cluster.heal()
    eventually(lambda: all(len(v) == 2 for v in cluster.views().values()), timeout=10)
    assert_workload_did_something(history, seed)
    failed = settle(claims(cluster, model, history, victims))
    if failed:
        pytest.fail(report(run, seed, failed, history, cluster), pytrace=False)


def guarded(name: str, run: Callable[[threading.Event], None], stop: threading.Event, errors: list[str]) -> None:
    """A thread's crash ends the workload and is reported, rather than silently thinning it."""
    try:
        run(stop)
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
        stop.set()


def assert_workload_did_something(history: History, seed: int) -> None:
    """A checker with nothing acknowledged to check proves nothing: each claim's operation happened."""
    done = Counter(op.kind for op in history.ops(outcome="ok"))
    thin = [k for k in ("signup", "login", "add", "logout", "badlogin") if done[k] == 0]
    assert not thin, f"seed {seed}: the workload acknowledged no {thin} ({history.summary()}): too weak to check"


def report(run: Run, seed: int, failed: list[Claim], history: History, cluster: LocalCluster) -> str:
    """The failure: why it is not a flake, how to repeat it, each broken claim with its history lines."""
    clocks = ", ".join(f"{n.name} {n.clock_offset_s:+.0f} s" for n in cluster.nodes)
    lines = [f"Jepsen check failed: {run.title}",
             f"{len(failed)} claim(s) still broken {SETTLE_S:.0f} s after the final heal (the checker retries until "
             "then): a correctness violation" + (", the clock nemesis's (issue 14), not a flaky test" if
                                                  run.clock_offset_s or run.steps else ""),
             f"seed {seed} ({SEED_ENV}={seed} repeats the schedule); clocks at the end: {clocks}",
             f"history: {history.summary()}", ""]
    lines += [f"BROKEN: {claim.what}: {claim.why}" for claim in failed]
    shown: dict[str, set[str]] = {}  # subject -> the kinds to show ("" for every kind)
    for claim in failed:
        for subject in claim.subjects:
            if subject != "nemesis":
                shown.setdefault(subject, set()).update(claim.kinds or ("",))
    for subject, kinds in sorted(shown.items(), key=lambda item: ("" not in item[1], item[0])):
        ops = [op for op in history.about(subject) if "" in kinds or op.kind in kinds]
        lines += ["", f"history of {subject}:"] + ["    " + op.line() for op in ops]
    lines += ["", "nemesis:"] + ["    " + op.line() for op in history.ops() if op.process == "nemesis"]
    if len(lines) > MAX_REPORT_LINES:
        lines = lines[:MAX_REPORT_LINES] + [f"... {len(lines) - MAX_REPORT_LINES} more lines"]
    return "\n".join(lines)


# ---- the tests ----------------------------------------------------------------------

def test_partitions_only(cluster: LocalCluster) -> None:
    """Cuts and heals with every clock right: what the cluster promises today."""
    jepsen(cluster, Run("partitions, every clock right"), seed())


def test_clock_nemesis_one_node_300s_ahead(cluster: LocalCluster) -> None:
    """n3 runs 300 s ahead for the whole run. Issue 14: if this fails, it is the clocks, not a flake."""
    jepsen(cluster, Run("partitions, n3's clock 300 s ahead", clock_offset_s=300.0), seed())


def test_clock_nemesis_one_node_300s_behind(cluster: LocalCluster) -> None:
    """n3 runs 300 s behind for the whole run. Issue 14: if this fails, it is the clocks, not a flake."""
    jepsen(cluster, Run("partitions, n3's clock 300 s behind", clock_offset_s=-300.0), seed())


def test_clock_nemesis_a_running_node_steps_back_600s(cluster: LocalCluster) -> None:
    """n3 starts 300 s ahead and is stepped back to 300 s behind mid-run, as an NTP step would (issue 14)."""
    run = Run("partitions, n3's clock +300 s, stepped to -300 s mid-run", clock_offset_s=300.0,
              steps=[ClockStep("n3", WORKLOAD_S / 2, -300.0)])
    jepsen(cluster, run, seed())
