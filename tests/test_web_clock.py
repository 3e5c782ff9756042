"""The web's cookies and lifetimes when the nodes' clocks disagree, in process (issue 14).

Two web apps (Flask's test client) share one fake cluster of daemons: it keeps
each session's expiry as a real instant and hands it to each node in that
node's own clock frame, as the daemons and mirrors do.  The real time and each
node's clock are driven by the test: ``logonmesh.flask.login.now_ms`` (the web's one
clock seam) and itsdangerous's signing timestamp read the clock of the node
whose request is being served.  A browser carries one cookie from node to node.
The last section runs real nodes, one with its clock 300 s ahead under
libfaketime, for what only real processes show: the offset each daemon
measures, in ``logonmesh peers`` and on /cluster, and a session that crosses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
import msgpack
from itsdangerous import Signer, TimestampSigner
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse

from logonmesh import testing
from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import LocalCluster, eventually
from logonmesh.flask import login as sessions
from logonmesh.flask.mirror import UNKNOWN
from logonmesh.flask.session import SIGNER_SALT
from logonmesh.web import create_app

PASSWORD = "correct horse battery"
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")  # cheap: the hash is not tested here
IDLE_S, TTL_S = 600, 3600
REFRESH_S = 60      # login.refresh_every(IDLE_S): how stale the last-seen stamp may get
SKEW_S = 300
COOKIE = "logonmesh"
CSRF_RE = re.compile(r'<input[^>]*\bname="csrf_token"[^>]*>')
VALUE_RE = re.compile(r'\bvalue="([^"]+)"')


@dataclass
class Held:
    """A session as the cluster holds it: its expiry is a real instant, whatever any node's clock says."""

    user: str
    uid: str
    expires_real_ms: float
    revoked: bool = False


@dataclass
class Node:
    name: str
    offset_ms: float    # this node's clock minus the real time
    app: Flask
    client: FlaskClient


@dataclass
class Mesh:
    """The real time, the sessions every daemon agrees on, and which node is serving the request in hand."""

    real_ms: float = field(default_factory=lambda: time.time() * 1000)
    sessions: dict[str, Held] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)   # daemon ops asked, by name
    lookups: int = 0                                  # mirror lookups
    mirror_current: bool = True
    serving: Node | None = None
    peers_report: dict[str, Any] = field(default_factory=dict)  # what every daemon's `peers` op answers
    data: dict[str, tuple[bytes | None, float]] = field(default_factory=dict)  # sid -> (session data, real expiry)

    def session_data(self, sid: str) -> bytes | None:
        data, expires = self.data.get(sid, (None, 0.0))
        return data if expires > self.real_ms else None

    def advance(self, seconds: float) -> None:
        self.real_ms += seconds * 1000

    def node_now_ms(self) -> float:
        """The clock of the node serving now (a node's web and daemon share its clock)."""
        return self.real_ms + (self.serving.offset_ms if self.serving else 0.0)

    def live(self, token: str) -> Held | None:
        held = self.sessions.get(token)
        if held is None or held.revoked or held.expires_real_ms <= self.real_ms:
            return None
        return held

    def revoked(self, token: str) -> bool:
        return self.sessions[token].revoked


class FakeDaemon:
    """One node's daemon: the cluster's sessions, with expiries in this node's clock frame."""

    def __init__(self, mesh: Mesh, offset_ms: float) -> None:
        self.mesh, self.offset_ms = mesh, offset_ms

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        self.mesh.calls[op] += 1
        return getattr(self, f"op_{op}")(**args)

    def close(self) -> None:
        pass

    def op_user(self, username: str) -> dict[str, Any]:
        return {"username": username, "id": f"id-{username}", "password_hash": PASSWORD_HASH}

    def op_failures_count(self, subjects: list[str]) -> dict[str, Any]:
        return {s: {"n": 0, "retry_after_s": 0} for s in subjects}

    def op_failures_add(self, subjects: list[str], window_s: int) -> None:
        return None

    def op_failures_reset(self, subjects: list[str]) -> None:
        return None

    def op_ping(self) -> dict[str, Any]:
        return {"peers_up": []}

    def op_record_items(self, namespace: str, prefix: str) -> dict[str, Any]:
        return {"items": []}

    def op_peers(self) -> dict[str, Any]:
        return self.mesh.peers_report

    def op_session_create(self, username: str, device: str = "") -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        held = self.mesh.sessions[token] = Held(username, f"id-{username}", self.mesh.real_ms + TTL_S * 1000)
        return {"token": token, "expires": held.expires_real_ms + self.offset_ms}

    def op_session_resolve(self, token: str) -> dict[str, Any] | None:
        held = self.mesh.live(token)
        return None if held is None else self._answer(held)

    def op_session_touch(self, token: str) -> dict[str, Any] | None:
        return None if self.mesh.live(token) is None else {"last_seen": "now"}

    def op_session_revoke(self, token: str) -> dict[str, Any]:
        held = self.mesh.sessions[token]
        held.revoked = True
        return {"expires": held.expires_real_ms + self.offset_ms}

    def _answer(self, held: Held) -> dict[str, Any]:
        return {"user": held.user, "uid": held.uid, "expires": held.expires_real_ms + self.offset_ms}

    def op_session_data_put(self, sid: str, data: bytes, ttl_s: int) -> dict[str, Any]:
        old = self.mesh.data.get(sid)
        if old is None or old[0] is not None:  # a destroyed session stays destroyed
            self.mesh.data[sid] = (data, self.mesh.real_ms + ttl_s * 1000)
        return {"sid": sid, "hlc": 1, "origin": "fake", "expires": self.mesh.real_ms + ttl_s * 1000 + self.offset_ms}

    def op_session_data_get(self, sid: str) -> dict[str, Any] | None:
        data = self.mesh.session_data(sid)
        return None if data is None else {"data": data, "expires": 0, "hlc": 1, "origin": "fake"}

    def op_session_data_delete(self, sid: str) -> dict[str, Any]:
        self.mesh.data[sid] = (None, self.mesh.real_ms + TTL_S * 1000)
        return {"expires": self.mesh.real_ms + TTL_S * 1000 + self.offset_ms}


class FakeMirror:
    """One node's session mirror: current unless the test says not, answering from the cluster's sessions."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon

    def lookup(self, token: str) -> Any:
        mesh = self.daemon.mesh
        mesh.lookups += 1
        if not mesh.mirror_current or token not in mesh.sessions:
            return UNKNOWN
        held = mesh.live(token)
        return None if held is None else self.daemon._answer(held)

    def records(self, namespace: str, prefix: str = "") -> list:
        return []

    def revoked(self, token: str, expires_ms: int) -> None:
        pass

    def session_data(self, sid: str) -> Any:
        mesh = self.daemon.mesh
        if not mesh.mirror_current or sid not in mesh.data:
            return UNKNOWN
        return mesh.session_data(sid)

    def session_data_written(self, sid: str, reply: dict, data: bytes) -> None:
        pass

    def session_data_destroyed(self, sid: str, expires_ms: int) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class Browser:
    """One cookie, carried from node to node as a browser does (cookies ignore the port)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(self, node: Node, method: str, path: str, data: dict[str, str] | None = None) -> TestResponse:
        self.mesh.serving = node
        headers = {"Cookie": f"{COOKIE}={self.cookie}"} if self.cookie else {}
        try:
            resp = node.client.open(path, method=method, data=data, headers=headers)
        finally:
            self.mesh.serving = None
        for header in resp.headers.getlist("Set-Cookie"):
            name, _, rest = header.partition("=")
            if name == COOKIE:
                self.cookie = rest.split(";", 1)[0] or None
        found = CSRF_RE.search(resp.get_data(as_text=True))
        value = VALUE_RE.search(found.group(0)) if found else None
        if value:
            self.csrf = value.group(1)
        return resp

    def get(self, node: Node, path: str) -> TestResponse:
        return self.request(node, "GET", path)

    def post(self, node: Node, path: str, data: dict[str, str] | None = None) -> TestResponse:
        return self.request(node, "POST", path, dict(data or {}, csrf_token=self.csrf or ""))

    def login(self, form_from: Node, post_to: Node | None = None, username: str = "alice") -> TestResponse:
        self.get(form_from, "/")
        return self.post(post_to or form_from, "/", {"username": username, "password": PASSWORD})

    def token(self, node: Node) -> str | None:
        """The daemon token of the session the cookie names, read as a node would (the session is server-side)."""
        if not self.cookie:
            return None
        sid = Signer(node.app.extensions["logonmesh"].cookie_key, salt=SIGNER_SALT).unsign(self.cookie).decode()
        data = self.mesh.session_data(sid)
        return None if data is None else msgpack.unpackb(data).get(sessions.TOKEN)


@pytest.fixture
def mesh(monkeypatch: pytest.MonkeyPatch) -> Mesh:
    """The shared clock: the web's seam and itsdangerous's signatures read the serving node's clock."""
    mesh = Mesh()
    monkeypatch.setattr(sessions, "now_ms", mesh.node_now_ms)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(mesh.node_now_ms() / 1000))
    return mesh


@pytest.fixture
def make_node(mesh: Mesh, tmp_path: Any) -> Iterator[Any]:
    made: list[Node] = []

    def make(name: str, skew_s: float) -> Node:
        config = {"LOGONMESH_NODE": name, "LOGONMESH_COOKIE": "c" * 32, "LOGONMESH_RUN_DIR": str(tmp_path / name),
                  "LOGONMESH_SESSION_IDLE": IDLE_S, "LOGONMESH_SESSION_TTL": TTL_S}
        daemon = FakeDaemon(mesh, skew_s * 1000)
        app = create_app(config, client=daemon)
        app.extensions["logonmesh"].mirror = FakeMirror(daemon)
        node = Node(name, skew_s * 1000, app, app.test_client(use_cookies=False))
        made.append(node)
        return node

    yield make
    for node in made:
        node.client.__exit__(None, None, None)


def served(resp: TestResponse) -> bool:
    """The page itself (200), not the redirect to the login."""
    if resp.status_code == 302:
        assert resp.headers["Location"] == "/", resp.headers["Location"]
        return False
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return True


SKEWS = pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S], ids=["ahead", "behind"])


# ---- the signed cookie and the CSRF tokens ------------------------------------------------------

@SKEWS
def test_a_session_made_on_a_skewed_node_is_served_everywhere(mesh: Mesh, make_node: Any, skew_s: int) -> None:
    """Flask refused a cookie signed by a clock ahead of the reader's (a negative age): both directions here."""
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    for made_on, other in ((skewed, right), (right, skewed)):
        b = Browser(mesh)
        resp = b.login(made_on)
        assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")
        assert served(b.get(other, "/budget")) and served(b.get(made_on, "/budget"))


@SKEWS
def test_forms_from_one_node_are_accepted_by_the_other(mesh: Mesh, make_node: Any, skew_s: int) -> None:
    """A CSRF token signed on one node, posted to another whose clock is minutes off: accepted, not a 400."""
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    for form_from, post_to in ((skewed, right), (right, skewed)):
        b = Browser(mesh)
        resp = b.login(form_from, post_to)
        assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")
        token = b.token(post_to)
        assert token and served(b.get(form_from, "/budget"))
        resp = b.post(post_to, "/logout")
        assert (resp.status_code, resp.headers["Location"]) == (302, "/")
        assert mesh.revoked(token) and not served(b.get(form_from, "/budget"))


def test_a_tampered_cookie_is_still_refused(mesh: Mesh, make_node: Any) -> None:
    """Not judging the signature's age must not mean not checking the signature."""
    node = make_node("n1", 0)
    b = Browser(mesh)
    b.login(node)
    assert b.cookie and served(b.get(node, "/budget"))
    i = len(b.cookie) - 6  # inside the signature; not its last character, whose low bits are padding
    b.cookie = b.cookie[:i] + ("A" if b.cookie[i] != "A" else "B") + b.cookie[i + 1:]
    assert not served(b.get(node, "/budget"))


def test_a_login_renews_the_csrf_secret(mesh: Mesh, make_node: Any) -> None:
    """A form token from before the login is refused after it (tokens no longer expire by time)."""
    node = make_node("n1", 0)
    b = Browser(mesh)
    b.get(node, "/")
    before = b.csrf
    b.post(node, "/", {"username": "alice", "password": PASSWORD})
    assert served(b.get(node, "/budget")) and b.csrf != before
    b.csrf = before
    assert b.post(node, "/logout").status_code == 400


# ---- the idle and absolute lifetimes -----------------------------------------------------------

@SKEWS
def test_activity_on_any_node_keeps_a_session_alive_for_the_idle_lifetime(mesh: Mesh, make_node: Any,
                                                                          skew_s: int) -> None:
    """The old cookie's unix stamps, compared across clocks 300 s apart, ended this session early or late."""
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    b = Browser(mesh)
    b.login(skewed)
    token = b.token(skewed)
    for node in (right, skewed, right, skewed):  # each request a second short of the idle lifetime
        mesh.advance(IDLE_S - 1)
        assert served(b.get(node, "/budget")), node.name
    mesh.advance(IDLE_S + 1)
    assert not served(b.get(right, "/budget"))
    assert token and mesh.revoked(token) and b.token(right) is None


@SKEWS
def test_the_idle_limit_holds_to_within_the_refresh_granularity(mesh: Mesh, make_node: Any, skew_s: int) -> None:
    """A request less than REFRESH_S after the last stamp does not re-sign the cookie, and so cannot extend it."""
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    b = Browser(mesh)
    b.login(skewed)
    token = b.token(skewed)
    assert served(b.get(skewed, "/budget"))  # the login's redirect, which signs the page's new CSRF secret
    mesh.advance(REFRESH_S - 1)
    resp = b.get(right, "/budget")
    assert served(resp) and not resp.headers.getlist("Set-Cookie")  # the re-sign economy holds
    mesh.advance(IDLE_S - REFRESH_S + 2)  # idle since that request: IDLE_S - REFRESH_S + 2; since the stamp: IDLE_S + 1
    assert not served(b.get(skewed, "/budget"))
    assert token and mesh.revoked(token)


@SKEWS
def test_the_absolute_lifetime_holds_across_skewed_nodes(mesh: Mesh, make_node: Any, skew_s: int) -> None:
    """With an absolute lifetime shorter than the daemon's, the login's remaining lifetime is the anchor."""
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    for node in (skewed, right):
        node.app.extensions["logonmesh"].absolute_s = 1000
    b = Browser(mesh)
    b.login(skewed)
    token = b.token(skewed)
    mesh.advance(500)
    assert served(b.get(right, "/budget"))
    mesh.advance(499)
    assert served(b.get(skewed, "/budget"))
    mesh.advance(2)
    assert not served(b.get(right, "/budget"))
    assert token and mesh.revoked(token)


@SKEWS
def test_the_daemons_expiry_ends_the_session_everywhere_at_once(mesh: Mesh, make_node: Any, skew_s: int) -> None:
    skewed, right = make_node("skewed", skew_s), make_node("right", 0)
    b = Browser(mesh)
    b.login(right)
    while mesh.real_ms + (IDLE_S - 1) * 1000 < mesh.sessions[b.token(right) or ""].expires_real_ms:
        mesh.advance(IDLE_S - 1)
        assert served(b.get(skewed, "/budget"))
    mesh.advance(IDLE_S - 1)  # past the daemons' expiry, within the idle lifetime
    assert not served(b.get(skewed, "/budget")) and not served(b.get(right, "/budget"))


def plant(mesh: Mesh, node: Node, browser: Browser, data: dict[str, Any], seen: Any = None) -> None:
    """A session the cluster holds with exactly this data (and this last-seen entry), and the cookie naming it."""
    sid = secrets.token_urlsafe(32)
    mesh.data[sid] = (msgpack.packb(data), mesh.real_ms + IDLE_S * 1000)
    if seen is not None:
        mesh.data[sid + sessions.SEEN_SUFFIX] = (msgpack.packb(seen), mesh.real_ms + IDLE_S * 1000)
    browser.cookie = Signer(node.app.extensions["logonmesh"].cookie_key, salt=SIGNER_SALT).sign(sid).decode()


def test_a_session_with_the_old_unix_stamps_is_expired_and_its_token_revoked(mesh: Mesh, make_node: Any) -> None:
    node = make_node("n1", 0)
    token = FakeDaemon(mesh, 0).op_session_create("alice")["token"]
    now = int(mesh.real_ms / 1000)
    b = Browser(mesh)
    plant(mesh, node, b, {sessions.TOKEN: token, "login_at": now, "seen": now})
    assert not served(b.get(node, "/budget"))
    assert mesh.revoked(token) and b.token(node) is None


@pytest.mark.parametrize("stamps", [{"seen": "soon", sessions.LEFT_AT_LOGIN: 1},
                                    {"seen": True, sessions.LEFT_AT_LOGIN: 1}, {sessions.LEFT_AT_LOGIN: 1},
                                    {"seen": 1, sessions.LEFT_AT_LOGIN: "long ago"}])
def test_a_session_with_malformed_remaining_lifetimes_is_expired(mesh: Mesh, make_node: Any,
                                                                 stamps: dict[str, Any]) -> None:
    node = make_node("n1", 0)
    token = FakeDaemon(mesh, 0).op_session_create("alice")["token"]
    b = Browser(mesh)
    seen = stamps.pop("seen", None)
    plant(mesh, node, b, {sessions.TOKEN: token, **stamps}, seen)
    assert not served(b.get(node, "/budget")) and mesh.revoked(token)


# ---- what the check costs ------------------------------------------------------------------------

def test_a_page_looks_the_session_up_once_and_asks_the_daemon_nothing_when_the_mirror_is_current(
        mesh: Mesh, make_node: Any) -> None:
    node = make_node("n1", 0)
    b = Browser(mesh)
    b.login(node)
    b.get(node, "/budget")  # the footer's ping, asked once a second at most
    mesh.calls.clear()
    mesh.lookups = 0
    assert served(b.get(node, "/budget"))
    assert mesh.lookups == 1 and "session_resolve" not in mesh.calls


def test_without_a_current_mirror_one_daemon_answer_serves_the_lifetimes_too(mesh: Mesh, make_node: Any) -> None:
    node = make_node("n1", 0)
    b = Browser(mesh)
    b.login(node)
    token = b.token(node)
    mesh.mirror_current = False
    mesh.calls.clear()
    assert served(b.get(node, "/budget")) and mesh.calls["session_resolve"] == 1
    mesh.advance(IDLE_S + 1)
    assert not served(b.get(node, "/budget"))
    assert mesh.calls["session_resolve"] == 2 and token and mesh.revoked(token)


# ---- the offsets on the /cluster page ------------------------------------------------------------

def _peer(name: str, offset_ms: float | None, skewed: bool) -> dict[str, Any]:
    return {"name": name, "up": True, "heard_ms_ago": 80, "reason": "", "in_registry": True, "digest_match": True,
            "last_seq": 9, "bus": "tcp://127.0.0.1:40001", "peer": "tcp://127.0.0.1:40002", "beat_gaps_ms": [100],
            "clock_offset_ms": offset_ms, "clock_rtt_ms": 0.3 if offset_ms is not None else None,
            "clock_skewed": skewed}


def test_the_cluster_page_shows_each_offset_and_flags_the_skewed_ones(mesh: Mesh, make_node: Any) -> None:
    node = make_node("n1", 0)
    mesh.peers_report = {"node": "n1", "digest": "ab" * 16, "heartbeat_ms": 100, "down_after_ms": 300,
                         "max_clock_offset_ms": 500,
                         "peers": [_peer("n2", 0.4, False), _peer("n3", -300_004.0, True), _peer("n4", None, False)]}
    b = Browser(mesh)
    b.login(node)
    page = b.get(node, "/cluster")
    assert served(page)
    html = page.get_data(as_text=True)
    cells = dict(re.findall(r'<th scope="row">(\w+)</th>.*?<td class="num offset">(.*?)</td>', html, re.S))
    assert cells == {"n1": "—", "n2": "+0.4 ms", "n3": '<span class="bad">\u2212300.0 s !</span>', "n4": "?"}
    notes = re.findall(r'<p class="bad clock-note">(.*?)</p>', html)
    assert notes == ["! n3&#39;s clock is 300.0 s behind n1&#39;s, beyond the 500 ms maximum."]
    assert "maximum of 500 ms" in html and " style=" not in html and "<script" not in html


def test_the_cluster_page_before_the_daemon_measures_offsets(mesh: Mesh, make_node: Any) -> None:
    """A daemon without the clock fields (older, or not yet measured): '?' for each peer, and no note."""
    node = make_node("n1", 0)
    old = _peer("n2", None, False)
    for key in ("clock_offset_ms", "clock_rtt_ms", "clock_skewed"):
        old.pop(key)
    mesh.peers_report = {"node": "n1", "digest": "ab" * 16, "heartbeat_ms": 100, "down_after_ms": 300,
                         "peers": [old]}
    b = Browser(mesh)
    b.login(node)
    html = b.get(node, "/cluster").get_data(as_text=True)
    assert '<td class="num offset">?</td>' in html and "clock-note" not in html


# ---- real nodes, one of them 300 s ahead (libfaketime) -------------------------------------------

EXE = shutil.which("logonmesh", path=os.path.dirname(sys.executable)) or shutil.which("logonmesh")
OFFSET_CLOSE_MS = 50.0  # one host: the estimate is right to within a few ms; this leaves room for a busy machine


@pytest.fixture(scope="module")
def skewed_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """ok1 on the real clock and fast1 SKEW_S ahead, each a daemon and a web."""
    attach_logs_on_failure(request.config)
    with LocalCluster() as cluster:
        cluster.start_nodes("ok", 1)
        cluster.start_nodes("fast", 1, clock_offset_s=SKEW_S)
        yield cluster


def peers_json(cluster: LocalCluster, node: str) -> dict[str, Any]:
    proc = subprocess.run([EXE, "peers", "--json", "--node", node], env=cluster.env, cwd=cluster.dir,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def measured(cluster: LocalCluster, node: str, peer: str) -> dict[str, Any]:
    """The peer's record in `peers --json`, once the daemon has an offset for it."""
    found = next(p for p in peers_json(cluster, node)["peers"] if p["name"] == peer)
    assert found["clock_offset_ms"] is not None and found["clock_rtt_ms"] is not None, found
    return found


def test_peers_shows_the_measured_offset_of_a_skewed_node_and_still_exits_0(skewed_cluster: LocalCluster) -> None:
    for asking, peer, sign in (("ok1", "fast1", 1), ("fast1", "ok1", -1)):
        found = eventually(lambda: measured(skewed_cluster, asking, peer), timeout=10)
        assert abs(found["clock_offset_ms"] - sign * SKEW_S * 1000) < OFFSET_CLOSE_MS, found
        assert found["clock_skewed"] is True and found["up"] is True
    proc = subprocess.run([EXE, "peers", "--node", "ok1"], env=skewed_cluster.env, cwd=skewed_cluster.dir,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    row = next(line.split() for line in lines if line.startswith("fast1 "))
    assert row[lines[1].split().index("OFFSET")] == "+300.0s!", proc.stdout
    assert "! fast1's clock is 300.0s ahead of ok1's, beyond the 500ms maximum" in lines
    assert all(len(line) <= 80 for line in lines)


def test_the_cluster_page_flags_the_skewed_node(skewed_cluster: LocalCluster) -> None:
    ok, fast = skewed_cluster.nodes
    eventually(lambda: measured(skewed_cluster, "ok1", "fast1"), timeout=10)
    b = testing.Browser(ok.url)
    username = f"clock-{secrets.token_hex(5)}"
    assert b.signup(username, PASSWORD).status_code == 302
    assert b.login(username, PASSWORD).status_code == 302
    page = b.get("/cluster")
    assert page.status_code == 200, page.text[:500]
    cell = re.search(r'<th scope="row">fast1</th>.*?<td class="num offset">(.*?)</td>', page.text, re.S)
    assert cell and cell.group(1) == '<span class="bad">+300.0 s !</span>', page.text[:3000]
    assert "fast1&#39;s clock is 300.0 s ahead of ok1&#39;s, beyond the 500 ms maximum." in page.text


@SKEWS
def test_a_real_session_crosses_between_clocks_300_s_apart(skewed_cluster: LocalCluster, skew_s: int) -> None:
    """Made on one node, used and logged out on the other: cookie and CSRF accepted whichever clock signed them."""
    ok, fast = skewed_cluster.nodes
    made_on, other = (fast, ok) if skew_s > 0 else (ok, fast)  # "behind": signed 300 s behind the reader
    b = testing.Browser(made_on.url)
    username = f"clock-{secrets.token_hex(5)}"
    assert b.signup(username, PASSWORD).status_code == 302
    eventually(lambda: other.call("user", username=username) is not None)
    assert b.login(username, PASSWORD).status_code == 302
    there = b.at(other.url)
    eventually(there.authenticated)
    there.get("/budget")
    assert there.post_form("/budget", {"label": "Tea", "amount": "-3"}).status_code == 303
    b.get("/budget")
    resp = b.at(other.url).post_form("/logout")  # the form from made_on, posted to the other node
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    assert not b.authenticated()
