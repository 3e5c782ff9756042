"""The web's session mirror: pages are served without a daemon round trip, and stay exact.

Real daemons, real web processes, real HTTP.  The mirror is kept by the
daemon's session feed; these tests check what a user would notice: a logout on
one node ends the session on the other within milliseconds, and pages keep
working through a daemon restart.
"""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from logonmesh.testing import Browser, LocalCluster, Node, eventually
from logonmesh.flask.mirror import DELETED, HeldRecords

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def local_cluster(two_nodes: LocalCluster) -> LocalCluster:
    """The shared two nodes (tests/conftest.py), shadowing the plugin's per-test fixture."""
    return two_nodes


def login(node: Node) -> tuple[Browser, str]:
    username = f"m-{uuid.uuid4().hex[:8]}"
    b = Browser(node.url)
    assert b.signup(username, PASSWORD).status_code == 302
    assert b.login(username, PASSWORD).status_code == 302
    return b, username


def resolves(node: Node) -> int:
    return node.status()["stats"].get("ipc_session_resolve", 0)


def a_page_asks_nobody(node: Node, b: Browser) -> None:
    before = resolves(node)
    assert b.authenticated()
    assert resolves(node) == before, "the page asked the daemon"


def test_pages_are_served_from_the_mirror(local_cluster: LocalCluster) -> None:
    n1, _ = local_cluster.nodes
    b, username = login(n1)
    eventually(lambda: b.authenticated())
    eventually(lambda: a_page_asks_nobody(n1, b), timeout=5)  # the mirror has the new session
    before = resolves(n1)
    for _ in range(20):
        page = b.get("/budget")
        assert page.status_code == 200 and username in page.text
    # a busy machine may delay a tick past the mirror's staleness now and then; most pages must not ask
    assert resolves(n1) - before <= 5, "the pages asked the daemon: the mirror is not in use"


def test_a_logout_ends_the_session_on_the_other_node_within_milliseconds(local_cluster: LocalCluster) -> None:
    n1, n2 = local_cluster.nodes
    delays = []
    for _ in range(10):
        b, _ = login(n1)
        on_n2 = b.at(n2.url)
        eventually(on_n2.authenticated)
        assert b.logout().status_code == 302
        started = time.perf_counter()
        eventually(lambda: not on_n2.authenticated(), timeout=1.0, interval=0.001)
        delays.append(time.perf_counter() - started)
    print(f"\nlogout on n1 -> refused on n2: median {statistics.median(delays) * 1000:.1f} ms, "
          f"worst {max(delays) * 1000:.1f} ms")


def test_the_node_that_logged_out_refuses_the_cookie_at_once(local_cluster: LocalCluster) -> None:
    n1, _ = local_cluster.nodes
    for _ in range(10):
        b, _ = login(n1)
        assert b.authenticated()
        kept = Browser(n1.url, b.session.__class__())
        kept.session.cookies.update(b.session.cookies)
        b.logout()
        assert not kept.authenticated(), "the web served a session it had just revoked"


def test_the_mirror_recovers_after_a_daemon_restart(local_cluster: LocalCluster) -> None:
    n1, n2 = local_cluster.nodes
    b, username = login(n2)
    on_n1 = b.at(n1.url)
    eventually(on_n1.authenticated)
    n1.daemon.stop()
    n1.daemon.start()
    local_cluster.wait_ready()
    eventually(on_n1.authenticated, timeout=10)  # the session came back from n2 by repair
    eventually(lambda: a_page_asks_nobody(n1, on_n1), timeout=5)  # the mirror took a fresh snapshot
    before = resolves(n1)
    for _ in range(10):
        assert on_n1.authenticated()
    assert resolves(n1) - before <= 3, "after the restart the mirror was not used again"
    b.logout()
    eventually(lambda: not on_n1.authenticated(), timeout=1.0)


def test_held_records_answer_a_prefix_in_key_order_and_see_keys_added_after_a_query() -> None:
    """In process: the sorted keys are reused between pages and made again when a key arrives."""
    held = HeldRecords()
    for key in ("bo/2", "al/9", "al/1", "alx/1"):
        held.hold(key, (1, "n1", key.upper()))
    assert held.starting_with("al/") == [("al/1", "AL/1"), ("al/9", "AL/9")]
    held.hold("al/5", (1, "n1", "AL/5"))
    held.hold("al/9", (2, "n2", DELETED))       # a newer delete hides it
    held.hold("al/1", (0, "n9", "older"))       # an older write changes nothing
    assert held.starting_with("al/") == [("al/1", "AL/1"), ("al/5", "AL/5")]
    assert held.starting_with("") == [("al/1", "AL/1"), ("al/5", "AL/5"), ("alx/1", "ALX/1"), ("bo/2", "BO/2")]
    assert held.starting_with("zz") == []

