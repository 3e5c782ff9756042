"""examples/notes on real nodes: any node serves a person's notes and session, through cuts and crashes.

The app is served exactly as its README says (``logonmesh web --app
notes:create_app`` from examples/notes), two nodes of it by the harness.  The
cluster is shared by the module (starting nodes is the slow part); each test
uses users of its own, and a test that cuts or kills puts the cluster back as
it found it, even when it fails.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import Browser, LocalCluster, Node, eventually

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "notes"
PASSWORD = "correct horse battery"
REPLICATE_S = 5.0  # a write on one node is read on another within a few ms; a loaded CI box gets seconds
VIEW_S = 10.0      # a cut, a heal or a restart shows in membership within a few heartbeats


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    with LocalCluster(app="notes:create_app", cwd=APP_DIR) as c:
        c.start_nodes("node", 2)
        yield c


@pytest.fixture
def nodes(cluster: LocalCluster) -> Iterator[tuple[Node, Node]]:
    """node1 and node2, whole and seeing each other, before and after the test."""
    n1, n2 = cluster.nodes
    yield n1, n2
    cluster.heal()
    for node in (n1, n2):
        if not node.running:
            node.start()
    cluster.wait_ready(timeout=VIEW_S)


def browser(node: Node | str) -> Browser:
    return Browser(node if isinstance(node, str) else node.url, login_path="/", logout_path="/logout",
                   protected_path="/notes", signup_path="/signup")


def copy_of(person: Browser) -> Browser:
    """Another browser on the same node with the same cookies, from now on kept apart (a second device)."""
    other = browser(person.url)
    other.session.cookies.update(person.session.cookies)
    return other


def new_user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def signed_up_and_logged_in(node: Node, prefix: str) -> tuple[Browser, str]:
    person, username = browser(node), new_user(prefix)
    assert person.signup(username, PASSWORD).status_code == 302
    assert person.login(username, PASSWORD).status_code == 302
    return person, username


def write_note(person: Browser, title: str) -> str:
    """Post the note form on the browser's node; the id, from the redirect to the new note."""
    person.get("/notes")
    resp = person.post_form("/notes", {"title": title, "body": f"body of {title}"})
    assert resp.status_code == 302, resp.text
    found = re.fullmatch(r".*/notes/([0-9a-f]{24})", resp.headers["Location"])
    assert found, resp.headers["Location"]
    return found.group(1)


def titles(person: Browser) -> list[str]:
    resp = person.get_json("/api/notes")
    assert resp.status_code == 200, resp.text
    return [note["title"] for note in resp.json()["notes"]]


def me(person: Browser) -> dict:
    resp = person.get_json("/api/me")
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_lists(person: Browser, *expected: str) -> None:
    assert set(expected) <= set(titles(person)), f"{person.url} lists {titles(person)}"


def test_a_note_written_on_node1_is_listed_on_node2_and_nobody_else_sees_it(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    alice, _ = signed_up_and_logged_in(n1, "alice")
    write_note(alice, "groceries")
    eventually(lambda: assert_lists(alice.at(n2.url), "groceries"), timeout=REPLICATE_S)
    assert me(alice.at(n2.url))["node"] == n2.name

    bob, _ = signed_up_and_logged_in(n2, "bob")
    assert titles(bob) == [] and titles(bob.at(n1.url)) == []
    stranger = browser(n2)
    assert stranger.get_json("/api/notes").status_code == 401
    assert stranger.get("/notes").headers["Location"].endswith("/")


def test_the_last_viewed_note_set_on_node2_is_read_on_node1_with_the_same_cookie(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    alice, _ = signed_up_and_logged_in(n1, "alice")
    first, second = write_note(alice, "first"), write_note(alice, "second")
    on_n2 = alice.at(n2.url)
    eventually(lambda: on_n2.get(f"/notes/{first}").status_code == 200, timeout=REPLICATE_S)

    def last_viewed_on_n1() -> None:
        assert me(alice)["last_viewed"] == first
        assert f'class="last-viewed" href="/notes/{first}">first<' in alice.get("/notes").text
    eventually(last_viewed_on_n1, timeout=REPLICATE_S)

    assert alice.get(f"/notes/{second}").status_code == 200  # and back: set on node1, read on node2
    eventually(lambda: me(on_n2)["last_viewed"] == second, timeout=REPLICATE_S)


def test_notes_written_on_both_sides_of_a_partition_meet_after_the_heal(cluster: LocalCluster,
                                                                        nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    alice, _ = signed_up_and_logged_in(n1, "alice")
    on_n2 = alice.at(n2.url)
    eventually(lambda: me(on_n2), timeout=REPLICATE_S)  # the login has reached node2 before the cut

    cluster.partition([n1], [n2])
    eventually(lambda: not n1.peers_up() and not n2.peers_up(), timeout=VIEW_S)
    write_note(alice, "left")
    write_note(on_n2, "right")
    assert "right" not in titles(alice) and "left" not in titles(on_n2)

    carol, username = browser(n1), new_user("carol")  # signed up on node1's side: node2 does not know her
    assert carol.signup(username, PASSWORD).status_code == 302
    assert carol.at(n2.url).login(username, PASSWORD).status_code == 200  # the form again, with its error
    assert carol.at(n2.url).get_json("/api/me").status_code == 401

    cluster.heal()
    eventually(lambda: assert_lists(alice, "left", "right"), timeout=VIEW_S)
    eventually(lambda: assert_lists(on_n2, "left", "right"), timeout=VIEW_S)
    # wait for the user to reach node2 rather than retry the login: each failure counts towards the throttle
    eventually(lambda: n2.call("user", username=username) is not None, timeout=VIEW_S)
    assert carol.at(n2.url).login(username, PASSWORD).status_code == 302
    assert me(carol.at(n2.url))["username"] == username


def test_a_node_killed_while_logged_in_leaves_the_session_working_on_the_other_and_on_its_restart(
        cluster: LocalCluster, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    alice, username = signed_up_and_logged_in(n1, "alice")
    before = write_note(alice, "before the crash")
    on_n2 = alice.at(n2.url)
    eventually(lambda: assert_lists(on_n2, "before the crash"), timeout=REPLICATE_S)

    n1.kill()  # SIGKILL, daemon and web: no goodbye
    assert me(on_n2)["username"] == username
    during = write_note(on_n2, "while node1 was down")
    assert on_n2.get(f"/notes/{during}").status_code == 200

    n1.start()
    cluster.wait_ready([n1], timeout=VIEW_S)

    def whole_again_on_n1() -> None:
        assert me(alice) == {"username": username, "node": n1.name, "last_viewed": during}
        assert_lists(alice, "before the crash", "while node1 was down")
    eventually(whole_again_on_n1, timeout=VIEW_S)
    assert alice.get(f"/notes/{before}").status_code == 200
    tab = copy_of(on_n2)  # keeps the cookie that the logout's answer clears from alice's jar
    assert alice.logout().status_code == 302
    eventually(lambda: tab.get_json("/api/me").status_code == 401, timeout=REPLICATE_S)
