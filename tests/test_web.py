"""The web front end, end to end: real daemons, real web processes, real HTTP.

Two nodes are started once for the module (start-up dominates the run time);
each test uses its own usernames so the tests do not see each other's users.
The daemon-down tests come last and put the node back as they found it.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest
import requests

from logonmesh.daemon.client import DaemonUnavailable
from logonmesh.testing import Browser, LocalCluster, Node, eventually
from logonmesh.flask.link import DaemonLink
from logonmesh.flask.login import is_local_path

PASSWORD = "correct horse battery"
DOWN_DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def local_cluster(two_nodes: LocalCluster) -> LocalCluster:
    """The shared two nodes (tests/conftest.py), shadowing the plugin's per-test fixture."""
    return two_nodes



def new_username(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def stored(node: Node, username: str) -> dict | None:
    return node.client.call("user", username=username)


def signed_up(node: Node, tag: str = "user") -> tuple[Browser, str]:
    """A fresh browser with a new account on `node`."""
    b, username = Browser(node.url), new_username(tag)
    resp = b.signup(username, PASSWORD)
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), resp.text[:500]
    return b, username


def logged_in(node: Node, tag: str = "user") -> tuple[Browser, str]:
    b, username = signed_up(node, tag)
    resp = b.login(username, PASSWORD)
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/budget"), resp.text[:500]
    return b, username


def assert_form_with_error(resp: requests.Response, text: str | None = None) -> None:
    assert resp.status_code == 200, resp.text[:500]
    assert "<form" in resp.text and 'name="csrf_token"' in resp.text
    assert 'class="error"' in resp.text
    if text is not None:
        assert text in resp.text


# ---- across nodes -----------------------------------------------------------

def test_signup_on_node1_logs_in_on_node2(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b1, username = Browser(n1.url), new_username("across")
    b1.get("/signup")
    resp = b1.post_form("/signup", {"username": username, "password": PASSWORD})
    signed_up_at = time.perf_counter()
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")

    b2 = Browser(n2.url)  # another person's browser: no cookies shared with b1

    def login_on_node2() -> None:
        resp = b2.login(username, PASSWORD)
        assert (resp.status_code, resp.headers.get("Location")) == (302, "/budget")

    eventually(login_on_node2, timeout=5.0)
    print(f"\nsign-up on node1 to first successful login on node2: "
          f"{(time.perf_counter() - signed_up_at) * 1000:.1f} ms")
    page = b2.get("/budget")
    assert page.status_code == 200
    assert f'<strong class="username">{username}</strong>' in page.text
    assert '<strong class="served-by">node2</strong>' in page.text


def test_session_cookie_is_httponly_lax_and_works_on_both_nodes(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = logged_in(n1)
    set_cookie = b.last.headers["Set-Cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert b.get("/budget").status_code == 200
    eventually(lambda: _assert_serves_budget(b.at(n2.url), username, "node2"))


def _assert_serves_budget(b: Browser, username: str, node_name: str) -> None:
    page = b.get("/budget")
    assert page.status_code == 200, page.status_code
    assert username in page.text and f'class="served-by">{node_name}<' in page.text


def test_each_login_gets_a_new_token(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = logged_in(n1)
    first = b.session.cookies.copy()
    assert b.login(username, PASSWORD).status_code == 302
    old = Browser(n1.url, requests.Session())
    old.session.cookies.update(first)
    eventually(lambda: _assert_redirects_to_login(old))  # the replaced token was revoked
    assert b.get("/budget").status_code == 200


# ---- redirects --------------------------------------------------------------

def test_budget_without_session_redirects_and_login_returns_there(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = signed_up(n1)
    resp = b.get("/budget?month=2024-05")
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    resp = b.login(username, PASSWORD)
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget?month=2024-05")
    resp = b.login(username, PASSWORD)  # the path is used once, then the default applies
    assert resp.headers["Location"] == "/budget"


@pytest.mark.parametrize("target", [
    "//evil.example/x", "http://evil.example/", "https://evil.example/x", "/\\evil.example/x",
    "/\t/evil.example/x", "javascript:alert(1)", "evil.example",
])
def test_foreign_return_path_is_never_followed(nodes: tuple[Node, Node], target: str) -> None:
    n1, _ = nodes
    b, username = signed_up(n1, "redirect")
    b.get("/budget")  # remembers /budget
    b.get(f"/?next={quote(target, safe='')}")
    resp = b.post_form("/", {"username": username, "password": PASSWORD})
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")

    fresh = Browser(n1.url)  # nothing remembered before the foreign path
    fresh.get(f"/?next={quote(target, safe='')}")
    resp = fresh.post_form("/", {"username": username, "password": PASSWORD})
    assert (resp.status_code, resp.headers["Location"]) == (302, "/budget")


def test_local_return_path_from_query_is_followed(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = signed_up(n1)
    b.get("/?next=/budget%3Fyear%3D2025")
    resp = b.post_form("/", {"username": username, "password": PASSWORD})
    assert resp.headers["Location"] == "/budget?year=2025"


@pytest.mark.parametrize(("target", "local"), [
    ("/budget", True), ("/budget?x=1", True), ("/a/b#c", True),
    ("//evil.example/x", False), ("http://evil.example/", False), ("/\\evil.example", False),
    ("/x\\y", False), ("/\r\nLocation: x", False), ("", False), (None, False), ("budget", False),
    ("///evil.example", False), ("https:/evil.example", False),
])
def test_is_local_path(target: str | None, local: bool) -> None:
    assert is_local_path(target) is local


# ---- logout -----------------------------------------------------------------

def test_logout_on_node1_refuses_the_same_cookie_on_node2(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = logged_in(n1, "logout")
    eventually(lambda: _assert_serves_budget(b.at(n2.url), username, "node2"))
    copied = requests.Session()
    copied.cookies.update(b.session.cookies)  # the cookie as it was before logging out

    resp = b.logout()
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    assert b.get("/budget").status_code == 302

    eventually(lambda: _assert_redirects_to_login(Browser(n2.url, copied)), timeout=2.0)
    _assert_redirects_to_login(Browser(n1.url, copied))


def _assert_redirects_to_login(b: Browser) -> None:
    resp = b.get("/budget")
    assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), resp.status_code


# ---- bad input --------------------------------------------------------------

@pytest.mark.parametrize(("username", "password", "message"), [
    ("", PASSWORD, "Choose a username"),
    ("u" * 65, PASSWORD, "at most 64"),
    ("bell\x07user", PASSWORD, "printable"),
    ("new\nline", PASSWORD, "printable"),
    ("nul\x00byte", PASSWORD, "printable"),
    (" padded", PASSWORD, "start or end with a space"),
    ("padded ", PASSWORD, "start or end with a space"),
    (None, "seven77", "8 to 1024"),
    (None, "p" * 1025, "8 to 1024"),
])
def test_bad_signup_input_shows_the_form_and_stores_nothing(
        nodes: tuple[Node, Node], username: str | None, password: str, message: str) -> None:
    n1, _ = nodes
    username = new_username("bad") if username is None else username
    b = Browser(n1.url)
    b.get("/signup")
    resp = b.post_form("/signup", {"username": username, "password": password})
    assert_form_with_error(resp, message)
    assert stored(n1, username) is None


def test_boundary_lengths_are_accepted(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    username = ("b" + uuid.uuid4().hex * 2)[:64]
    b = Browser(n1.url)
    assert b.signup(username, "p" * 1024).status_code == 302
    assert b.login(username, "p" * 1024).headers["Location"] == "/budget"
    assert Browser(n1.url).signup(new_username("eight"), "8 chars!").status_code == 302


def test_duplicate_username_shows_the_form_and_keeps_the_first(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    _, username = signed_up(n1, "dup")
    before = stored(n1, username)
    b = Browser(n1.url)
    b.get("/signup")
    assert_form_with_error(b.post_form("/signup", {"username": username, "password": "another password"}),
                           "taken")
    assert stored(n1, username) == before
    assert b.login(username, PASSWORD).status_code == 302

    eventually(lambda: _assert_stored(n2, username))
    b2 = Browser(n2.url)
    b2.get("/signup")
    assert_form_with_error(b2.post_form("/signup", {"username": username, "password": "third password"}),
                           "taken")
    assert stored(n1, username) == before


def _assert_stored(node: Node, username: str) -> None:
    assert stored(node, username) is not None, f"{username} is not on {node.name} yet"


def test_wrong_password_or_unknown_user_gets_the_form_with_an_error(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = signed_up(n1)
    assert_form_with_error(b.login(username, "not the password"), "Wrong username or password")
    assert_form_with_error(b.login(new_username("nobody"), PASSWORD), "Wrong username or password")
    assert_form_with_error(b.login("", ""), None)
    assert b.get("/budget").status_code == 302


@pytest.mark.parametrize("path", ["/signup", "/", "/logout"])
def test_post_without_a_valid_csrf_token_gets_400(nodes: tuple[Node, Node], path: str) -> None:
    n1, _ = nodes
    username = new_username("csrf")
    data = {"username": username, "password": PASSWORD}
    b = Browser(n1.url)
    b.get(path if path != "/logout" else "/")

    missing = b.post_form(path, data, csrf=False)
    invalid = b.post_form(path, dict(data, csrf_token="not-a-token"))
    other_session = Browser(n1.url).post_form(path, dict(data, csrf_token=b.csrf_token))
    for resp in (missing, invalid, other_session):
        assert resp.status_code == 400, resp.text[:300]
        assert "Traceback" not in resp.text and "<html" in resp.text
    assert stored(n1, username) is None


def test_body_over_64_kib_gets_413_page(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    username = new_username("big")
    b = Browser(n1.url)
    b.get("/signup")
    resp = b.post_form("/signup", {"username": username, "password": "x" * (64 * 1024)})
    assert resp.status_code == 413
    assert "64 KiB" in resp.text and "Traceback" not in resp.text
    assert stored(n1, username) is None


def test_unknown_route_is_a_page(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    resp = requests.get(f"{n1.url}/nope", timeout=5)
    assert resp.status_code == 404 and "<html" in resp.text
    assert requests.get(f"{n1.url}/logout", timeout=5).status_code == 405


def test_healthz_reports_node_and_peers(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    resp = requests.get(f"{n1.url}/healthz", timeout=5)
    assert resp.status_code == 200
    assert resp.json() == {"node": "node1", "daemon": True, "peers_up": ["node2"]}
    assert requests.get(f"{n2.url}/static/style.css", timeout=5).status_code == 200


# ---- the budget demo, the cluster page and the footer ----------------------------

def budget_on(node: Node, username: str) -> list[dict]:
    """A user's budget entries as the daemon holds them: records of the "budget" namespace."""
    from logonmesh.web.budget import entries_of
    items = node.call("record_items", namespace="budget", prefix=f"{username}/")["items"]
    return entries_of(username, [(i["key"], i["value"]) for i in items])


def entry_rows(page: requests.Response) -> list[str]:
    """The budget table's label cells, newest first."""
    return re.findall(r'<td class="label-cell">([^<]*)<', page.text)


def test_budget_entries_added_on_node2_appear_on_node1(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, username = logged_in(n2, "budget")
    b.get("/budget")
    resp = b.post_form("/budget", {"label": "Groceries", "amount": "-42.5"})
    assert (resp.status_code, resp.headers["Location"]) == (303, "/budget")  # PRG: a reload posts nothing
    assert b.post_form("/budget", {"label": "Salary", "amount": "1200"}).status_code == 303
    page = b.get("/budget")
    assert entry_rows(page) == ["Salary", "Groceries"]
    assert "Added \u201cSalary\u201d" in page.text and '<p class="total">1,157.50</p>' in page.text
    assert sum(e["cents"] for e in budget_on(n2, username)) == 115750

    def on_node1() -> None:
        page = b.at(n1.url).get("/budget")
        assert 'class="served-by">node1<' in page.text and entry_rows(page) == ["Salary", "Groceries"]
        assert '<p class="total">1,157.50</p>' in page.text
    eventually(on_node1)


@pytest.mark.parametrize("label,amount,field,text", [
    ("", "3", "label", "Say what the entry is for."),
    ("x" * 81, "3", "label", "at most 80 characters"),
    ("Tea", "", "amount", "Enter an amount"),
    ("Tea", "1.234", "amount", "at most two decimals"),
    ("Tea", "1e3", "amount", "at most two decimals"),
    ("Tea", "12345678901", "amount", "at most two decimals"),
    ("Tea", "0.00", "amount", "zero"),
])
def test_a_refused_budget_entry_shows_its_error_beside_the_field(
        nodes: tuple[Node, Node], label: str, amount: str, field: str, text: str) -> None:
    n1, _ = nodes
    b, username = logged_in(n1, "entry")
    b.get("/budget")
    resp = b.post_form("/budget", {"label": label, "amount": amount})
    assert_form_with_error(resp, text)
    assert f'id="{field}-error"' in resp.text
    tag = re.search(rf'<input[^>]*id="{field}"[^>]*>', resp.text).group(0)
    assert 'aria-invalid="true"' in tag and f"{field}-error" in tag and "autofocus" in tag
    assert budget_on(n1, username) == []


def test_amounts_are_read_as_people_write_them() -> None:
    from logonmesh.web.forms import parse_cents
    from logonmesh.web.present import money
    cases = {"12.50": 1250, "-3": -300, "+0,5": 50, "\u22127.05": -705, "9999999999.99": 999999999999,
             "1.": None, ".5": None, "1,000": None, "12.345": None, "--1": None, " 1": None}
    assert {text: parse_cents(text) for text in cases} == cases
    assert [money(c) for c in (0, 5, -300, 123456789)] == ["0.00", "0.05", "\u22123.00", "1,234,567.89"]


def test_a_users_budget_is_only_the_records_keyed_and_valued_as_theirs() -> None:
    """Usernames may hold a "/": "alice/x"'s entries share alice's key prefix and must not show on her page."""
    from logonmesh.web.budget import Refused, check, entries_of
    mine = {"user": "alice", "label": "Tea", "cents": -300, "created_at": "2026-01-02T00:00:00.000+00:00"}
    items = [("alice/b2", dict(mine, created_at="2026-01-03T00:00:00.000+00:00")), ("alice/a1", mine),
             ("alice/x/c3", dict(mine, user="alice/x")),   # another user's, under the same prefix
             ("alice/d4", dict(mine, user="bob")),          # a value that names someone else
             ("alice/e5", "not a map"), ("alice/f6", {"user": "alice", "label": "no cents"})]
    assert [e["id"] for e in entries_of("alice", items)] == ["a1", "b2"]
    assert [e["id"] for e in entries_of("alice/x", items)] == ["c3"]
    for label, cents, field in [("", 1, "label"), ("x" * 81, 1, "label"), (" Tea", 1, "label"),
                                ("Tea", 10**12 + 1, "amount")]:
        with pytest.raises(Refused) as info:
            check(label, cents)
        assert info.value.field == field


def test_budget_post_without_a_session_goes_to_the_login(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b = Browser(n1.url)
    b.get("/")
    resp = b.post_form("/budget", {"label": "x", "amount": "1"})
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")


def test_cluster_page_shows_the_peers_for_a_logged_in_user(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b = Browser(n1.url)
    resp = b.get("/cluster")
    assert (resp.status_code, resp.headers["Location"]) == (302, "/")
    b, _ = logged_in(n1, "cluster")
    page = b.get("/cluster")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    row = re.search(r'<tr class="state-(\w+)">\s*<th scope="row">node2</th>', page.text)
    assert row and row.group(1) == "up", page.text[:3000]
    assert '<th scope="row">node1</th>' in page.text and "0 down" in page.text
    offsets = re.findall(r'<th scope="row">(\w+)</th>.*?<td class="num offset">(.*?)</td>', page.text, re.S)
    assert [name for name, _ in offsets] == ["node1", "node2"] and offsets[0][1] == "—", page.text[:3000]
    bars = re.findall(r'<rect class="bar (\w+)"', page.text)
    assert bars and set(bars) <= {"ok", "late", "over", "open"}
    peers = n1.call("peers")
    assert peers["heartbeat_ms"] == 100 and peers["down_after_ms"] == 300
    assert all(0 < gap < 5000 for gap in peers["peers"][0]["beat_gaps_ms"])


def test_every_page_has_a_footer_with_the_node_and_its_peers(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    b, _ = logged_in(n2, "footer")
    for path in ("/", "/signup", "/budget", "/cluster", "/nope"):
        page = b.get(path)
        assert 'Served by node <strong class="footer-node">node2</strong>' in page.text, path
        assert '<span class="peers-up">node1</span>' in page.text, path


# ---- daemon down (last: they disturb node1, and put it back) ----------------

def timed_get(b: Browser, path: str) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    resp = b.get(path)
    return resp, time.perf_counter() - started


def test_daemon_stopped_gives_503_fast_then_recovers(local_cluster: LocalCluster,
                                                    nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    b, username = logged_in(n1, "down")
    web_pid = n1.web.pid
    n1.daemon.stop()
    try:
        _assert_down(n1, b, username)
    finally:
        n1.daemon.start()
        local_cluster.wait_ready()
    assert n1.web.pid == web_pid and n1.web.alive
    eventually(lambda: _assert_serves_budget(b, username, "node1"), timeout=5.0)
    assert Browser(n1.url).login(username, PASSWORD).status_code == 302


def test_daemon_frozen_gives_503_within_2s_then_recovers(local_cluster: LocalCluster,
                                                        nodes: tuple[Node, Node]) -> None:
    """SIGSTOP keeps the socket open but silent: the client's timeout, not a missing file, answers."""
    n1, _ = nodes
    b, username = logged_in(n1, "frozen")
    n1.daemon.signal(signal.SIGSTOP)
    try:
        _assert_down(n1, b, username)
        _assert_burst_gets_503_in_time(n1, b)
    finally:
        n1.daemon.signal(signal.SIGCONT)
        local_cluster.wait_ready()
    eventually(lambda: _assert_serves_budget(b, username, "node1"), timeout=5.0)


def _assert_down(n1: Node, b: Browser, username: str) -> None:
    """The session mirror may serve the page until it goes stale (a heartbeat and a half), then 503s."""
    def page_is_503() -> None:
        resp, took = timed_get(b, "/budget")
        assert took < DOWN_DEADLINE_S, took
        assert resp.status_code == 503, resp.status_code
        return resp

    resp = eventually(page_is_503, timeout=DOWN_DEADLINE_S)
    assert "not answering" in resp.text and "node1" in resp.text
    health = requests.get(f"{n1.url}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["daemon"] is False
    assert b.get("/").status_code == 200  # forms still render without the daemon
    # the footer says so (its ping is cached for up to a second) rather than failing the page
    eventually(lambda: "daemon is not answering" in b.get("/").text, timeout=DOWN_DEADLINE_S)
    started = time.perf_counter()
    resp = b.post_form("/", {"username": username, "password": PASSWORD})
    assert resp.status_code == 503 and time.perf_counter() - started < DOWN_DEADLINE_S


def _assert_burst_gets_503_in_time(n1: Node, b: Browser) -> None:
    """More requests than waitress threads: none may wait behind the others' timeouts."""
    def one(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        resp = requests.get(f"{n1.url}/budget", cookies=b.session.cookies, allow_redirects=False, timeout=10)
        return resp.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    assert all(code == 503 and took < DOWN_DEADLINE_S for code, took in results), results


# ---- the daemon link, without processes ----------------------------------------

class SilentClient:
    """Stands in for DaemonClient: times out (after `delay_s`) until `answering` is set."""

    def __init__(self, delay_s: float = 0.3) -> None:
        self.delay_s, self.answering, self.calls = delay_s, False, 0

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        self.calls += 1
        if self.answering:
            return {"op": op}
        time.sleep(self.delay_s)
        raise DaemonUnavailable("timeout")

    def close(self) -> None:
        pass


def test_link_fails_fast_after_a_timeout_then_probes_and_recovers() -> None:
    client = SilentClient()
    link = DaemonLink(client, silent_for_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(DaemonUnavailable):
        link.call("ping")
    started = time.perf_counter()
    with pytest.raises(DaemonUnavailable):
        link.call("ping")
    assert time.perf_counter() - started < 0.05 and client.calls == 1
    client.answering = True
    eventually(lambda: link.call("ping"), timeout=2.0, interval=0.02)
    assert link.call("ping") == {"op": "ping"}


def test_link_is_not_tripped_by_a_missing_socket() -> None:
    client = SilentClient(delay_s=0.0)
    link = DaemonLink(client, silent_for_s=60)  # type: ignore[arg-type]
    with pytest.raises(DaemonUnavailable):
        link.call("ping")
    client.answering = True
    assert link.call("ping") == {"op": "ping"}
