"""Your sessions, everywhere: the daemon's per-user listing, the /sessions page, the CLI and the app's API.

The listing, the revocations and the last-seen stamp cross processes (a
browser's login on node2 listed and ended from node1), so those tests run
real nodes; the index, the public id and the device description are pure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from typing import Any, Iterator

import pytest
import requests

from logonmesh.daemon import wire
from logonmesh.daemon.cache import Cache
from logonmesh.daemon.kinds import DEVICE_MAX, Entry, session_id
from logonmesh.flask.sessions import device_of
from logonmesh.testing import Browser, LocalCluster, Node, eventually

PASSWORD = "correct horse battery staple"
EXE = shutil.which("logonmesh", path=os.path.dirname(sys.executable)) or shutil.which("logonmesh")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/126.0.0.0 Mobile Safari/537.36")
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Version/17.5 Mobile/15E148 Safari/604.1")
ID_RE = re.compile(r'data-session-id="([0-9a-f]{16})"')


# ---- pure: the index, the public id, the device -------------------------------------------

def _session(token: str, user: str, hlc: int = 1 << 16, expires: int = 2_000_000_000_000,
             value: dict | None = None) -> Entry:
    shown = {"uid": "u-" + user, "user": user, "node": "n1", "created_at": "2026-01-01T00:00:00.000+00:00",
             "last_seen": "2026-01-01T00:00:00.000+00:00", "device": "Firefox on Linux"}
    return Entry("s", token, hlc, "n1", shown if value is None else value, expires)


def test_the_index_by_user_follows_writes_revocations_and_purges() -> None:
    cache, now = Cache(), 1_000_000_000_000
    cache.merge([_session("a" * 43, "alice"), _session("b" * 43, "alice", expires=now + 10),
                 _session("c" * 43, "bob")], now)
    assert [e.key for e in cache.sessions_of("alice")] == ["a" * 43, "b" * 43]
    cache.merge([Entry("s", "a" * 43, 2 << 16, "n2", None, 2_000_000_000_100)], now)  # revoked
    assert [e.key for e in cache.sessions_of("alice")] == ["b" * 43]
    cache.merge([_session("a" * 43, "alice", hlc=3 << 16)], now)  # a late live copy loses to the tombstone
    assert [e.key for e in cache.sessions_of("alice")] == ["b" * 43]
    cache.purge(now + 20)  # b expired
    assert cache.sessions_of("alice") == [] and [e.key for e in cache.sessions_of("bob")] == ["c" * 43]
    assert "alice" not in cache._sessions_of  # no empty sets left behind for users with no session


def test_a_touch_replaces_the_version_and_keeps_the_index() -> None:
    cache, now = Cache(), 1_000_000_000_000
    first = _session("a" * 43, "alice")
    touched = first._replace(hlc=first.hlc + 1, value={**first.value, "last_seen": "2026-01-02T00:00:00.000+00:00"})
    cache.merge([first, touched], now)
    assert [e.value["last_seen"] for e in cache.sessions_of("alice")] == ["2026-01-02T00:00:00.000+00:00"]


def test_a_public_id_is_short_hex_and_not_the_token() -> None:
    token = "T" * 43
    sid = session_id(token)
    assert re.fullmatch(r"[0-9a-f]{16}", sid) and sid not in token and sid == session_id(token)
    assert session_id("U" * 43) != sid


@pytest.mark.parametrize("agent, expected", [
    (FIREFOX, "Firefox on Linux"), (CHROME_ANDROID, "Chrome on Android"), (SAFARI_IPHONE, "Safari on iOS"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36 "
     "Edg/126.0", "Edge on Windows"),
    ("curl/8.5.0", "curl"), ("python-requests/2.31", "Python"), (None, "unknown device"), ("", "unknown device"),
])
def test_the_device_is_a_few_words_from_the_user_agent(agent: str | None, expected: str) -> None:
    assert device_of(agent) == expected


def test_an_unknown_agent_is_cut_short_and_printable() -> None:
    described = device_of("Strange\x00Bot\n" + "x" * 500)
    assert len(described) <= DEVICE_MAX and described.isprintable() and described.startswith("StrangeBot")


def test_the_wire_refuses_a_session_with_a_long_or_unprintable_device() -> None:
    good = list(_session("a" * 43, "alice"))
    assert wire.check_entry(good).value["device"] == "Firefox on Linux"
    for device in ("x" * (DEVICE_MAX + 1), "tab\there"):
        bad = list(_session("a" * 43, "alice", value={**good[4], "device": device}))
        with pytest.raises(wire.WireError):
            wire.check_entry(bad)


# ---- real nodes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_cluster(two_nodes: LocalCluster) -> LocalCluster:
    return two_nodes



def browser(node: Node, agent: str) -> Browser:
    """A person's browser of its own (its own cookies), sending this User-Agent."""
    http = requests.Session()
    http.headers["User-Agent"] = agent
    return Browser(node.url, http)


def new_user(node: Node) -> str:
    username = f"sess-{uuid.uuid4().hex[:10]}"
    assert browser(node, FIREFOX).signup(username, PASSWORD).status_code == 302
    return username


def logged_in(node: Node, username: str, agent: str) -> Browser:
    b = browser(node, agent)
    assert b.login(username, PASSWORD).status_code == 302
    assert b.authenticated()
    return b


def listed(b: Browser) -> tuple[list[str], str]:
    """The ids on b's /sessions page, and the one marked as b's own."""
    page = b.get("/sessions")
    assert page.status_code == 200, page.text[:300]
    mine = re.findall(r'class="session current" data-session-id="([0-9a-f]{16})"', page.text)
    assert len(mine) == 1, page.text
    return ID_RE.findall(page.text), mine[0]


def run(c: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], env=c.env, cwd=c.dir, capture_output=True, text=True, timeout=30)


def test_the_page_lists_the_sessions_of_every_node_and_marks_this_one(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    laptop, phone = logged_in(n1, username, FIREFOX), logged_in(n2, username, CHROME_ANDROID)
    ids, mine = eventually(lambda: _with_count(listed(laptop), 2))
    assert mine in ids
    page = laptop.get("/sessions").text
    assert "Firefox on Linux" in page and "Chrome on Android" in page and ">node1<" in page and ">node2<" in page
    phone_ids, phone_mine = listed(phone.at(n2.url))
    assert phone_mine != mine and set(phone_ids) == set(ids)
    for sid in ids:  # a listed id is no token: it resolves nothing anywhere
        assert n1.client.call("session_resolve", token=sid) is None
        assert n2.client.call("session_resolve", token=sid) is None
    assert browser(n1, FIREFOX).get("/sessions").status_code == 302  # logged out: to the login


def _with_count(found: tuple[list[str], str], n: int) -> tuple[list[str], str]:
    assert len(found[0]) == n, found
    return found


def test_ending_one_session_logs_it_out_on_every_node(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    laptop, phone = logged_in(n1, username, FIREFOX), logged_in(n2, username, SAFARI_IPHONE)
    ids, mine = eventually(lambda: _with_count(listed(laptop), 2))
    other = next(sid for sid in ids if sid != mine)
    resp = laptop.post_form("/sessions/revoke", {"session_id": other})
    assert (resp.status_code, resp.headers["Location"]) == (303, "/sessions")
    eventually(lambda: _logged_out(phone.at(n2.url)), timeout=2.0)
    assert not phone.at(n1.url).authenticated() and laptop.authenticated()
    assert listed(laptop)[0] == [mine]


def _logged_out(b: Browser) -> None:
    assert not b.authenticated()


def test_ending_all_others_keeps_only_this_one(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    here = logged_in(n1, username, FIREFOX)
    others = [logged_in(n2, username, CHROME_ANDROID), logged_in(n1, username, SAFARI_IPHONE)]
    eventually(lambda: _with_count(listed(here), 3))
    resp = here.post_form("/sessions/revoke", {"all_others": "1"})
    assert resp.status_code == 303
    for b in others:
        eventually(lambda: _logged_out(b.at(n2.url)), timeout=2.0)
        assert not b.at(n1.url).authenticated()
    assert here.authenticated() and here.at(n2.url).authenticated()


def test_ending_this_one_logs_out_here(nodes: tuple[Node, Node]) -> None:
    n1, _ = nodes
    username = new_user(n1)
    b = logged_in(n1, username, FIREFOX)
    _, mine = listed(b)
    resp = b.post_form("/sessions/revoke", {"session_id": mine})
    assert (resp.status_code, resp.headers["Location"]) == (303, "/")
    assert not b.authenticated()


@pytest.mark.parametrize("form", [{"session_id": "not-an-id"}, {}, {"all_others": "2"},
                                  {"session_id": "0" * 16, "all_others": "1"}])
def test_a_bad_revocation_is_refused_and_ends_nothing(nodes: tuple[Node, Node], form: dict[str, str]) -> None:
    n1, _ = nodes
    b = logged_in(n1, new_user(n1), FIREFOX)
    listed(b)
    assert b.post_form("/sessions/revoke", form).status_code == 400
    assert b.authenticated()


def test_a_revocation_without_the_csrf_token_is_refused(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    b, other = logged_in(n1, username, FIREFOX), logged_in(n2, username, FIREFOX)
    listed(b)
    assert b.post_form("/sessions/revoke", {"all_others": "1"}, csrf=False).status_code == 400
    assert other.at(n2.url).authenticated()


def test_the_last_seen_stamp_is_rewritten_by_a_touch_and_replicated(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    created = n1.client.call("session_create", username=username, device="cli test")
    first = eventually(lambda: _one(n2.client.call("sessions_of", username=username)))
    assert first["id"] == created["id"] == session_id(created["token"]) and first["node"] == "node1"
    assert first["device"] == "cli test" and first["last_seen"] == first["created_at"]
    touched = eventually(lambda: _later(n2.client.call("session_touch", token=created["token"]), first))
    eventually(lambda: _seen_at(n1.client.call("sessions_of", username=username), touched["last_seen"]))
    n1.client.call("session_revoke", token=created["token"])
    eventually(lambda: _none(n2.client.call("sessions_of", username=username)))
    assert n2.client.call("session_touch", token=created["token"]) is None  # a revoked session stays revoked
    assert n2.client.call("session_resolve", token=created["token"]) is None


def _one(found: list[dict]) -> dict:
    assert len(found) == 1, found
    return found[0]


def _later(touched: dict | None, first: dict) -> dict:
    assert touched is not None and touched["last_seen"] > first["last_seen"], (touched, first)
    return touched


def _seen_at(found: list[dict], when: str) -> None:
    assert [s["last_seen"] for s in found] == [when]


def _none(found: list[dict]) -> None:
    assert found == []


def test_the_daemon_refuses_a_bad_device(nodes: tuple[Node, Node]) -> None:
    from logonmesh.daemon.client import DaemonError
    n1, _ = nodes
    username = new_user(n1)
    with pytest.raises(DaemonError) as refused:
        n1.client.call("session_create", username=username, device="x" * (DEVICE_MAX + 1))
    assert refused.value.code == "invalid"


# ---- the CLI --------------------------------------------------------------------------------

def test_the_cli_lists_and_ends_sessions(local_cluster: LocalCluster, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    username = new_user(n1)
    laptop, phone = logged_in(n1, username, FIREFOX), logged_in(n2, username, CHROME_ANDROID)
    found: list[dict[str, Any]] = eventually(lambda: _count_json(run(local_cluster, "sessions", username, "--json"), 2))
    assert all(set(s) == {"id", "node", "created_at", "last_seen", "device"} for s in found)
    assert sorted(s["device"] for s in found) == ["Chrome on Android", "Firefox on Linux"]
    table = run(local_cluster, "sessions", username, "--node", "node2")
    assert table.returncode == 0 and "Firefox on Linux" in table.stdout and "2 live sessions" in table.stdout
    phone_id = next(s["id"] for s in found if s["device"] == "Chrome on Android")

    one = run(local_cluster, "revoke", username, "--session", phone_id)
    assert one.returncode == 0 and phone_id in one.stdout, one.stderr
    eventually(lambda: _logged_out(phone.at(n2.url)), timeout=2.0)
    assert laptop.authenticated()
    again = run(local_cluster, "revoke", username, "--session", phone_id)
    assert again.returncode == 1 and "no live session" in again.stdout
    bad = run(local_cluster, "revoke", username, "--session", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a session id" in bad.stderr

    every = run(local_cluster, "revoke", username, "--json")
    assert every.returncode == 0 and len(json.loads(every.stdout)["revoked"]) == 1
    eventually(lambda: _logged_out(laptop.at(n2.url)), timeout=2.0)
    assert not laptop.authenticated()
    assert _count_json(run(local_cluster, "sessions", username, "--json"), 0) == []


def _count_json(proc: subprocess.CompletedProcess, n: int) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert len(found) == n, found
    return found


# ---- the app's API: mesh.sessions, mesh.revoke and the signals -------------------------------

@pytest.fixture
def app_on_node1(local_cluster: LocalCluster) -> Iterator[Any]:
    """The demo app in this process, on node1's daemon, so a test can listen to its signals."""
    from logonmesh.web import create_app
    config = {k: v for k, v in local_cluster.env.items() if k.startswith("LOGONMESH_")}
    config["LOGONMESH_NODE"] = "node1"
    app = create_app({**config, "WTF_CSRF_ENABLED": False, "TESTING": True})
    try:
        yield app
    finally:
        app.extensions["logonmesh"].close()


def test_the_api_lists_revokes_and_signals(app_on_node1: Any, nodes: tuple[Node, Node]) -> None:
    from logonmesh.flask import session_ended, session_revoked, session_started
    from logonmesh.web import mesh
    n1, n2 = nodes
    username = new_user(n1)
    other = logged_in(n2, username, SAFARI_IPHONE)
    heard: list[tuple[str, dict]] = []
    receivers = {name: (lambda sender, name=name, **kw: heard.append((name, kw)))
                 for name in ("started", "ended", "revoked")}
    session_started.connect(receivers["started"], app_on_node1)
    session_ended.connect(receivers["ended"], app_on_node1)
    session_revoked.connect(receivers["revoked"], app_on_node1)
    http = app_on_node1.test_client()
    assert http.post("/", data={"username": username, "password": PASSWORD},
                     headers={"User-Agent": FIREFOX}).status_code == 302
    assert heard[0][0] == "started" and heard[0][1]["username"] == username
    mine = heard[0][1]["session_id"]
    with app_on_node1.app_context():
        found = eventually(lambda: _with_len(mesh.sessions(username), 2))
        assert {s["device"] for s in found} == {"Firefox on Linux", "Safari on iOS"}
        assert not any(s["current"] for s in found)  # no request here: none of them is "this one"
        ended = mesh.revoke(username, next(s["id"] for s in found if s["id"] != mine))
    assert heard[1] == ("revoked", {"username": username, "session_ids": ended}) and len(ended) == 1
    eventually(lambda: _logged_out(other.at(n2.url)), timeout=2.0)
    assert http.post("/logout").status_code == 302
    assert heard[2] == ("ended", {"username": username, "session_id": mine})
    with app_on_node1.app_context():
        assert eventually(lambda: _with_len(mesh.sessions(username), 0)) == []


def _with_len(found: list, n: int) -> list:
    assert len(found) == n, found
    return found


def test_using_a_session_moves_its_last_seen_on_every_node(request: pytest.FixtureRequest) -> None:
    """With a 10 s idle lifetime the web refreshes its idle stamp (and so ``last_seen``) after 1 s of use."""
    from logonmesh.pytest_plugin import attach_logs_on_failure
    attach_logs_on_failure(request.config)
    with LocalCluster(env={"LOGONMESH_SESSION_IDLE": "10"}) as cluster:
        n1, n2 = cluster.start_nodes("node", 2, web=True)
        username = new_user(n1)
        b = logged_in(n1, username, FIREFOX)
        first = eventually(lambda: _one(n2.client.call("sessions_of", username=username)))

        def used_later() -> None:
            assert b.at(n2.url).authenticated()
            now = _one(n1.client.call("sessions_of", username=username))
            assert now["last_seen"] > first["last_seen"] and now["created_at"] == first["created_at"], now
        eventually(used_later, timeout=5.0, interval=0.3)


def test_peer_signals_follow_a_peer_going_down_and_coming_back(request: pytest.FixtureRequest) -> None:
    from logonmesh.flask import peer_down, peer_up
    from logonmesh.pytest_plugin import attach_logs_on_failure
    from logonmesh.web import create_app
    attach_logs_on_failure(request.config)
    with LocalCluster() as cluster:
        _, n2 = cluster.start_nodes("n", 2, web=False)
        config = {k: v for k, v in cluster.env.items() if k.startswith("LOGONMESH_")}
        app = create_app({**config, "LOGONMESH_NODE": "n1", "TESTING": True})
        heard: list[tuple[str, str]] = []

        def up(sender: Any, node: str) -> None:
            heard.append(("up", node))

        def down(sender: Any, node: str) -> None:
            heard.append(("down", node))
        peer_up.connect(up, app)
        peer_down.connect(down, app)
        watch = app.extensions["logonmesh"].peers
        try:
            assert app.test_client().get("/healthz").status_code == 200  # the first request starts the watch
            eventually(lambda: _known(watch.known, {"n2"}))
            assert heard == []  # the baseline sends nothing
            n2.stop()
            eventually(lambda: _heard(heard, [("down", "n2")]))
            n2.start()
            eventually(lambda: _heard(heard, [("down", "n2"), ("up", "n2")]), timeout=10.0)
        finally:
            peer_up.disconnect(up, app)
            peer_down.disconnect(down, app)
            app.extensions["logonmesh"].close()


def _known(known: Any, expected: set[str]) -> None:
    assert known == expected, known


def _heard(heard: list, expected: list) -> None:
    assert heard == expected, heard


def test_nobody_ends_another_persons_session_by_its_id(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    alice, bob = new_user(n1), new_user(n1)
    hers = logged_in(n2, alice, FIREFOX)
    her_id = eventually(lambda: _one(n1.client.call("sessions_of", username=alice)))["id"]
    his = logged_in(n1, bob, FIREFOX)
    listed(his)
    assert his.post_form("/sessions/revoke", {"session_id": her_id}).status_code == 303
    assert "already ended" in his.get("/sessions").text
    assert hers.at(n2.url).authenticated() and hers.at(n1.url).authenticated()
