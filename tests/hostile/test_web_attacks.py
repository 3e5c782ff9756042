"""Attacks on the web, each against real nodes over real HTTP, each with its documented answer.

| attack                                   | answer                                               |
|------------------------------------------|------------------------------------------------------|
| password guessing spread over nodes      | 429 + Retry-After once the cluster-wide count is up  |
| guessing many usernames from one address | 429 + Retry-After (per-address limit)                |
| a POST without a valid CSRF token        | 400 page, nothing stored                             |
| a foreign return path (open redirect)    | never stored, never followed: /budget instead        |
| a 10 MB body                             | 413 page at once; the node keeps serving             |
| a malformed session cookie               | logged out: 302 to the login, which is a 200 form    |
| an idle or too old session               | logged out and its token revoked everywhere          |
| HTML or SQL in a username                | stored as is, shown escaped, works on every node     |

The limits are small (LOGONMESH_THROTTLE_USER=5, LOGONMESH_THROTTLE_ADDR=8)
so that the guessing is quick; every test starts with the address's count at 0.
"""

from __future__ import annotations

import secrets
import time
import uuid
from html.parser import HTMLParser
from typing import Any, Iterator

import pytest
import requests
import sqlite_utils
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import Signer
from markupsafe import escape

from logonmesh.testing import Browser, LocalCluster, Node, eventually
from hostile_kit import assert_no_crash, tally
from logonmesh.flask import login
from logonmesh.flask.login import is_local_path
from logonmesh.flask.session import SIGNER_SALT
from logonmesh.flask.state import derive_key
from logonmesh.web import create_app

PASSWORD = "correct horse battery"
USER_LIMIT, ADDR_LIMIT, WINDOW_S = 5, 8, 60
IDLE_S, TTL_S = 600, 3600
COOKIE = "logonmesh"
HOSTILE_NAMES = ["<script>alert(1)</script>", "'; DROP TABLE users; --", '" onmouseover="x',
                 "Robert'); DROP TABLE users;--", "<img src=x onerror=alert(1)>", "{{7*7}}",
                 "x@node1", "addr:127.0.0.1"]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    env = {"LOGONMESH_THROTTLE_USER": str(USER_LIMIT), "LOGONMESH_THROTTLE_ADDR": str(ADDR_LIMIT),
           "LOGONMESH_THROTTLE_WINDOW": str(WINDOW_S), "LOGONMESH_SESSION_IDLE": str(IDLE_S),
           "LOGONMESH_SESSION_TTL": str(TTL_S)}
    with LocalCluster(env=env) as cluster:
        cluster.start_nodes("node", 2)
        yield cluster
        assert_no_crash(cluster)


@pytest.fixture
def nodes(local_cluster: LocalCluster) -> tuple[Node, Node]:
    """Both nodes, with this client's address forgiven, so each test starts with a clean count."""
    n1, n2 = local_cluster.nodes
    n1.call("failures_reset", subjects=["addr:127.0.0.1"])
    for node in (n1, n2):
        eventually(lambda: _failures(node, "addr:127.0.0.1") == 0)
    return n1, n2


def _failures(node: Node, subject: str) -> int:
    return node.call("failures_count", subjects=[subject])[subject]["n"]


def new_username(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def signed_up(node: Node, username: str | None = None) -> tuple[Browser, str]:
    b, username = Browser(node.url), username or new_username("web")
    resp = b.signup(username, PASSWORD)
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), resp.text[:500]
    return b, username


def assert_secure_headers(resp: requests.Response) -> None:
    """The headers every response carries, error pages and static files included."""
    csp = resp.headers.get("Content-Security-Policy", "")
    for directive in ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'", "base-uri 'none'"):
        assert directive in csp, (resp.url, csp)
    assert "unsafe" not in csp
    assert resp.headers.get("X-Frame-Options") == "DENY"
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    assert resp.headers.get("Referrer-Policy") == "same-origin"
    if "text/html" in resp.headers.get("Content-Type", ""):
        assert_no_inline_code(resp.text)


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag}[{name}]" for name, _ in attrs if name == "style" or name.startswith("on")]


def assert_no_inline_code(page: str) -> None:
    """What the CSP would block must not be there at all: no script or style element or attribute."""
    finder = _InlineFinder()
    finder.feed(page)
    assert not finder.found, finder.found


# ---- brute force ------------------------------------------------------------------

def test_guessing_spread_over_both_nodes_gets_429_with_retry_after(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = signed_up(n1)
    eventually(lambda: n2.call("user", username=username) is not None)
    for i in range(USER_LIMIT):
        node = nodes[i % 2]
        resp = b.at(node.url).login(username, f"guess number {i}")
        assert resp.status_code == 200 and "Wrong username or password" in resp.text
        for other in nodes:  # the count is the cluster's: each node sees every guess
            eventually(lambda: _failures(other, f"user:{username}") == i + 1)
    tally["web: login attempts"] += USER_LIMIT
    for node in nodes:
        for password in ("another guess", PASSWORD):  # the right password is refused too, unchecked
            resp = b.at(node.url).login(username, password)
            assert_429(resp)
            tally["web: login attempts"] += 1
    assert not b.authenticated()


def assert_429(resp: requests.Response) -> None:
    assert resp.status_code == 429, resp.text[:300]
    assert 1 <= int(resp.headers["Retry-After"]) <= WINDOW_S
    assert "Too many failed logins" in resp.text
    assert_secure_headers(resp)


def test_a_right_password_clears_the_username_count_everywhere(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = signed_up(n2)
    for i in range(USER_LIMIT - 1):
        assert b.at(nodes[i % 2].url).login(username, "wrong").status_code == 200
    eventually(lambda: _failures(n1, f"user:{username}") == USER_LIMIT - 1)
    resp = b.at(n1.url).login(username, PASSWORD)
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")
    for node in nodes:
        eventually(lambda: _failures(node, f"user:{username}") == 0)
    tally["web: login attempts"] += USER_LIMIT


def test_a_username_too_long_to_exist_is_still_counted(nodes: tuple[Node, Node]) -> None:
    """The daemon ignores subjects over 200 characters, so the web hashes long usernames into short ones."""
    b, username = Browser(nodes[0].url), "x" * 5000
    for i in range(USER_LIMIT):
        assert b.at(nodes[i % 2].url).login(username, "guess").status_code == 200
        for node in nodes:  # the user's subject goes out just before the address's, from the same node
            eventually(lambda: _failures(node, "addr:127.0.0.1") == i + 1)
    assert_429(b.at(nodes[1].url).login(username, "guess"))
    tally["web: login attempts"] += USER_LIMIT + 1


def test_many_usernames_from_one_address_get_429(nodes: tuple[Node, Node]) -> None:
    """X-Forwarded-For is the client's own word: it changes nothing, the TCP peer is what counts."""
    b = Browser(nodes[0].url)
    for i in range(ADDR_LIMIT):
        forged = {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}"}
        b = b.at(nodes[i % 2].url)
        b.session.headers.update(forged)
        assert b.login(new_username("nobody"), "guess").status_code == 200
        for node in nodes:
            eventually(lambda: _failures(node, "addr:127.0.0.1") == i + 1)
    assert_429(b.at(nodes[1].url).login(new_username("fresh"), "guess"))
    tally["web: login attempts"] += ADDR_LIMIT + 1


# ---- CSRF ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/signup", "/logout", "/budget"])
def test_posts_without_a_valid_csrf_token_get_400(nodes: tuple[Node, Node], path: str) -> None:
    n1, _ = nodes
    victim, _ = signed_up(n1)
    username = new_username("csrf")
    data = {"username": username, "password": PASSWORD}
    attempts = [
        requests.post(n1.url + path, data=data, allow_redirects=False, timeout=5),  # no session at all
        victim.post_form(path, data, csrf=False),                                   # the victim's cookie, no token
        victim.post_form(path, dict(data, csrf_token="forged")),                     # a made-up token
        Browser(n1.url).post_form(path, dict(data, csrf_token=victim.csrf_token)),  # a token without its session
        requests.post(n1.url + path, json=data, allow_redirects=False, timeout=5,
                      headers={"Origin": "https://evil.example"}),
    ]
    for resp in attempts:
        assert resp.status_code == 400, resp.text[:300]
        assert_secure_headers(resp)
    tally["web: CSRF-less POSTs"] += len(attempts)
    assert n1.call("user", username=username) is None


# ---- open redirects -------------------------------------------------------------------

FOREIGN = ["//evil.example", "https://evil.example/", "/\\evil.example", "\\\\evil.example", "/\t/evil.example",
           "//evil.example/%2F..", "javascript:alert(1)", "http:evil.example", "/\n/evil.example", "///evil.example",
           " //evil.example", "\x00//evil.example"]


@pytest.mark.parametrize("target", FOREIGN)
def test_a_foreign_return_path_is_never_followed(nodes: tuple[Node, Node], target: str) -> None:
    n1, n2 = nodes
    b, username = signed_up(n1)
    b.get("/", params={"next": target})
    resp = b.at(n2.url).login(username, PASSWORD)
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")
    tally["web: open-redirect attempts"] += 1


def test_a_forged_host_header_does_not_leak_into_redirects(nodes: tuple[Node, Node]) -> None:
    resp = requests.get(nodes[0].url + "/budget", headers={"Host": "evil.example"}, allow_redirects=False,
                        timeout=5)
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/")
    tally["web: open-redirect attempts"] += 1


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.text(max_size=40) | st.sampled_from(FOREIGN).map(lambda t: t + "x"))
def test_only_local_paths_are_ever_remembered(local_cluster: LocalCluster, target: str) -> None:
    """Whatever ?next= holds, the signed cookie keeps it only if it is a path on this site."""
    b = Browser(local_cluster.nodes[0].url)
    resp = b.get("/", params={"next": target})
    assert resp.status_code == 200
    remembered = read_session(local_cluster, b).get("next")
    assert remembered is None or (remembered == target and is_local_path(target))
    tally["web: open-redirect attempts"] += 1


# ---- bodies ----------------------------------------------------------------------

TEN_MB = 10 * 2**20


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_a_10_mb_body_gets_413_quickly_and_the_node_keeps_serving(nodes: tuple[Node, Node], how: str) -> None:
    n1, _ = nodes
    b = Browser(n1.url)
    b.get("/signup")
    body = b"username=big&password=" + b"x" * TEN_MB + f"&csrf_token={b.csrf_token}".encode()
    started = time.monotonic()
    resp = b.session.post(n1.url + "/signup", data=body if how == "content-length" else _chunks(body),
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    elapsed = time.monotonic() - started
    assert resp.status_code == 413 and "64 KiB" in resp.text, resp.text[:300]
    assert_secure_headers(resp)
    assert elapsed < 10, f"413 took {elapsed:.1f} s"
    print(f"\n10 MB body ({how}): 413 in {elapsed * 1000:.0f} ms")
    assert requests.get(n1.url + "/healthz", timeout=5).status_code == 200
    signed_up(n1)  # and it still does real work
    assert n1.call("user", username="big") is None
    tally["web: 10 MB bodies"] += 1


def _chunks(body: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


# ---- session cookies ------------------------------------------------------------------------
#
# The cookie holds only a signed session id; the session itself is in the mesh.  So a cookie holder can
# forge nothing but ids, and what a session holds is changed here the way only a cluster member could,
# through a daemon's session_data_put, to check that the web is robust to whatever the store holds.

def signer(cluster: LocalCluster, key: bytes | None = None) -> Signer:
    """The cluster's cookie signer (as every node derives it from the cluster cookie), or another key's."""
    return Signer(key or derive_key(cluster.cookie.encode()), salt=SIGNER_SALT)


def sid_of(cluster: LocalCluster, b: Browser) -> str:
    return signer(cluster).unsign(b.session.cookies.get(COOKIE)).decode()


def read_session(cluster: LocalCluster, b: Browser) -> dict[str, Any]:
    """What the session named by the browser's cookie holds, as the daemons hold it."""
    if not b.session.cookies.get(COOKIE):
        return {}
    found = cluster.nodes[0].call("session_data_get", sid=sid_of(cluster, b))
    return {} if found is None else msgpack.unpackb(found["data"])


def write_session(cluster: LocalCluster, sid: str, data: dict[str, Any]) -> None:
    """Put this content under the session id, on every node (a member's write), and wait until all have it."""
    write_raw(cluster, sid, data)


def read_seen(cluster: LocalCluster, b: Browser) -> Any:
    """The session's last-seen entry (how long the login had left when last seen), as the daemons hold it."""
    found = cluster.nodes[0].call("session_data_get", sid=sid_of(cluster, b) + login.SEEN_SUFFIX)
    return None if found is None else msgpack.unpackb(found["data"])


def write_raw(cluster: LocalCluster, sid: str, data: Any) -> None:
    packed = msgpack.packb(data)
    cluster.nodes[0].call("session_data_put", sid=sid, data=packed, ttl_s=IDLE_S * 2)
    for node in cluster.nodes:
        eventually(lambda: (node.call("session_data_get", sid=sid) or {}).get("data") == packed, timeout=5)


def planted(cluster: LocalCluster, data: dict[str, Any], seen: Any = None) -> str:
    """A cookie naming a fresh session that holds ``data`` (and, if given, this last-seen entry)."""
    sid = secrets.token_urlsafe(32)
    write_session(cluster, sid, data)
    if seen is not None:
        write_raw(cluster, sid + login.SEEN_SUFFIX, seen)
    return signer(cluster).sign(sid).decode()


def set_cookie(b: Browser, value: str) -> None:
    b.session.cookies.clear()
    b.session.cookies.set(COOKIE, value, domain="127.0.0.1", path="/")


def malformed_cookies(cluster: LocalCluster, valid: str) -> dict[str, str]:
    i = len(valid) - 6  # inside the signature; not its last character, whose low bits are padding
    flipped = valid[:i] + ("A" if valid[i] != "A" else "B") + valid[i + 1:]
    sid = valid.rsplit(".", 1)[0]
    return {
        "garbage": "garbage", "empty": "", "dots": "a.b.c", "truncated": valid[: len(valid) // 2],
        "bad signature": flipped, "signed by another key": signer(cluster, b"some other key").sign(sid).decode(),
        "huge": "A" * 4000, "an id no node knows": signer(cluster).sign("x" * 43).decode(),
        "not even an id": signer(cluster).sign("../../etc").decode(),
        "token not a string": planted(cluster, {login.TOKEN: ["a", "list"]}),
        "stamps not numbers": planted(cluster, {login.TOKEN: "x" * 43, login.LEFT_AT_LOGIN: None}, seen="soon"),
        "no stamps": planted(cluster, {login.TOKEN: "x" * 43}),
        "foreign return path": planted(cluster, {login.RETURN_PATH: "//evil.example"}),
    }


def test_a_malformed_session_cookie_means_logged_out(local_cluster: LocalCluster,
                                                     nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = signed_up(n1)
    assert b.login(username, PASSWORD).status_code == 302
    for label, value in malformed_cookies(local_cluster, b.session.cookies.get(COOKIE)).items():
        for node in (n1, n2):
            c = Browser(node.url)
            set_cookie(c, value)
            resp = c.get("/budget")
            assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), (label, resp.text[:300])
            resp = c.get("/")
            assert resp.status_code == 200 and 'name="csrf_token"' in resp.text, (label, resp.text[:300])
            tally["web: malformed cookies"] += 1
        resp = c.post_form("/", {"username": username, "password": PASSWORD})  # and one can log in again
        assert (resp.status_code, resp.headers.get("Location")) == (302, "/budget"), (label, resp.text[:300])
    assert "Traceback" not in local_cluster.all_logs()


def logged_in(node: Node) -> tuple[Browser, str, str]:
    b, username = signed_up(node)
    assert b.login(username, PASSWORD).status_code == 302
    return b, username, read_session(node.cluster, b)[login.TOKEN]


def test_an_idle_session_is_logged_out_and_its_token_revoked(local_cluster: LocalCluster,
                                                             nodes: tuple[Node, Node]) -> None:
    """The last-seen stamp is moved back as if the browser had been away (no test waits IDLE_S): it says more
    of the session's lifetime was left when it was last seen."""
    n1, n2 = nodes
    b, _, token = logged_in(n1)
    seen = read_seen(local_cluster, b)
    write_raw(local_cluster, sid_of(local_cluster, b) + login.SEEN_SUFFIX, seen + (IDLE_S + 2) * 1000)
    resp = b.at(n2.url).get("/budget")
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    for node in (n1, n2):
        eventually(lambda: node.call("session_resolve", token=token) is None)
    assert login.TOKEN not in read_session(local_cluster, b)


def test_a_session_past_its_absolute_lifetime_is_logged_out(local_cluster: LocalCluster,
                                                            nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, _, token = logged_in(n2)
    state = read_session(local_cluster, b)
    old = dict(state, **{login.LEFT_AT_LOGIN: state[login.LEFT_AT_LOGIN] + (TTL_S + 2) * 1000})
    write_session(local_cluster, sid_of(local_cluster, b), old)
    resp = b.at(n1.url).get("/budget")
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    eventually(lambda: n2.call("session_resolve", token=token) is None)


def test_activity_keeps_a_session_alive(local_cluster: LocalCluster, nodes: tuple[Node, Node]) -> None:
    """A request within the idle lifetime is served and moves an old last-seen stamp forward."""
    n1, n2 = nodes
    b, _, _ = logged_in(n1)
    seen = read_seen(local_cluster, b)
    old_stamp = seen + (IDLE_S - 30) * 1000
    write_raw(local_cluster, sid_of(local_cluster, b) + login.SEEN_SUFFIX, old_stamp)
    assert b.at(n2.url).get("/budget").status_code == 200
    eventually(lambda: read_seen(local_cluster, b) <= seen, timeout=5)


# ---- headers and harmless usernames -------------------------------------------------------

def test_every_response_carries_the_security_headers(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = signed_up(n1)
    responses = [b.get("/"), b.get("/signup"), b.get("/budget"), b.get("/static/style.css"), b.get("/healthz"),
                 b.get("/no-such-page"), requests.get(n1.url + "/logout", timeout=5),
                 b.post_form("/", {"username": username, "password": PASSWORD}), b.get("/budget"), b.get("/cluster")]
    assert [r.status_code for r in responses][:9] == [200, 200, 302, 200, 200, 404, 405, 302, 200]
    assert responses[9].status_code in (200, 302)
    for resp in responses:
        assert_secure_headers(resp)
    assert "Secure" not in responses[7].headers["Set-Cookie"]  # plain http, no --secure-cookies


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_usernames_that_look_like_html_or_sql_are_harmless(local_cluster: LocalCluster,
                                                           nodes: tuple[Node, Node], name: str) -> None:
    n1, n2 = nodes
    b, _ = signed_up(n1, name)
    eventually(lambda: n2.call("user", username=name) is not None)
    assert n2.call("user", username=name)["username"] == name
    db = sqlite_utils.Database(local_cluster.db)
    try:
        assert [r["username"] for r in db.query("select username from users where username = ?", [name])] == [name]
    finally:
        db.conn.close()

    wrong = b.at(n2.url).login(name, "not the password")  # echoed back in the form, escaped
    assert wrong.status_code == 200 and escape(name) in wrong.text
    resp = b.at(n2.url).login(name, PASSWORD)
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")
    page = b.at(n2.url).get("/budget")
    assert page.status_code == 200 and escape(name) in page.text
    for resp in (wrong, page):
        if any(c in name for c in "<>\""):
            assert name not in resp.text
        assert_secure_headers(resp)
    tally["web: hostile usernames"] += 1


class SessionStoreOnly:
    """Stands in for the daemon client in process: it stores session data (the login form's CSRF secret)."""

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        assert op in ("session_data_put", "ping"), op
        return {"sid": args.get("sid"), "hlc": 1, "origin": "inproc", "expires": 2**40, "destroyed": False,
                "node": "inproc", "peers_up": []}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("secure_setting,scheme,secure", [
    (False, "http", False), (False, "https", True), (True, "http", True), (True, "https", True)])
def test_the_session_cookie_is_secure_over_https_or_when_told(tmp_path: Any, secure_setting: bool, scheme: str,
                                                              secure: bool) -> None:
    """In process (Flask's test client), since the nodes speak plain http: the Secure flag per request."""
    config = {"LOGONMESH_NODE": "inproc", "LOGONMESH_COOKIE": "c" * 32, "LOGONMESH_RUN_DIR": str(tmp_path),
              "LOGONMESH_SECURE_COOKIES": "1" if secure_setting else "0"}
    app = create_app(config, client=SessionStoreOnly())
    resp = app.test_client().get("/", base_url=f"{scheme}://localhost")
    assert resp.status_code == 200
    assert ("; Secure" in resp.headers["Set-Cookie"]) == secure
    assert ("Strict-Transport-Security" in resp.headers) == (scheme == "https")
