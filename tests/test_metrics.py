"""GET /metrics: the Prometheus text format from every web process, the daemon's figures in one ipc call.

In-process tests build the families from fake figures and a fake daemon;
the rest start a real two-node cluster of the demo with a small login
throttle, and read /metrics as Prometheus would.  The daemon-down test comes
last and starts the daemon again.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest
import requests
from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from logonmesh.daemon.client import DaemonUnavailable
from logonmesh.flask import LogonMesh, metrics_blueprint
from logonmesh.flask.metrics import daemon_families, web_families
from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import Browser, LocalCluster, Node, eventually

PASSWORD = "correct horse battery"
THROTTLE_USER = 2

WEB_FAMILIES = {"logonmesh_mirror_hits", "logonmesh_mirror_misses", "logonmesh_logins",
                "logonmesh_http_request_duration_seconds", "logonmesh_daemon_up"}
DAEMON_FAMILIES = {"logonmesh_peers_up", "logonmesh_peers_known", "logonmesh_users", "logonmesh_sessions",
                   "logonmesh_session_tombstones", "logonmesh_session_data", "logonmesh_records",
                   "logonmesh_daemon_uptime_seconds", "logonmesh_merges_published", "logonmesh_merges_applied",
                   "logonmesh_frames_refused", "logonmesh_repairs_started", "logonmesh_repairs_done",
                   "logonmesh_repairs_failed", "logonmesh_repairs_timed_out", "logonmesh_repair_bytes",
                   "logonmesh_clock_offset_warnings"}

FIGURES = {"uptime_s": 12.5, "peers_up": 1, "peers_known": 2, "users": 3, "sessions": 4, "session_tombstones": 1,
           "session_data": 5, "records": 6, "merges_published": 7, "merges_applied": 8,
           "refused": {"bad_signature": 9, "replay": 1}, "repairs_started": 2, "repairs_done": 1,
           "repairs_failed": 0, "repairs_timed_out": 1, "repair_bytes_in": 100, "repair_bytes_out": 200,
           "clock_offset_warnings": 3}


def parse(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family: {(sample name, sorted labels): value}}, through prometheus_client's own parser."""
    return {family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
            for family in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return families[family][(sample or family, tuple(sorted(labels.items())))]


# ---- in process: the families, from given figures ------------------------------------------

def exposition(metrics: list) -> dict:
    """The families as the text format has them, so what is checked is what Prometheus reads."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class Fixed(Collector):
        def collect(self) -> Iterator:
            return iter(metrics)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return parse(generate_latest(registry).decode())


def test_daemon_figures_become_gauges_and_counters() -> None:
    families = exposition(daemon_families(FIGURES))
    assert set(families) == DAEMON_FAMILIES | {"logonmesh_daemon_up"}
    assert value(families, "logonmesh_daemon_up") == 1
    assert value(families, "logonmesh_peers_up") == 1 and value(families, "logonmesh_peers_known") == 2
    assert value(families, "logonmesh_merges_applied", "logonmesh_merges_applied_total") == 8
    assert value(families, "logonmesh_frames_refused", "logonmesh_frames_refused_total", reason="replay") == 1
    assert value(families, "logonmesh_repair_bytes", "logonmesh_repair_bytes_total", direction="out") == 200


def test_a_silent_daemon_leaves_only_daemon_up_zero() -> None:
    assert exposition(daemon_families(None)) == {"logonmesh_daemon_up": {("logonmesh_daemon_up", ()): 0.0}}


def test_a_figure_the_daemon_did_not_give_is_left_out_not_zero() -> None:
    families = exposition(daemon_families({"peers_known": 2, "refused": {}}))
    assert "logonmesh_peers_up" not in families  # a 0 there would fire the peer-down alert
    assert value(families, "logonmesh_peers_known") == 2


def test_web_series_exist_at_zero_from_the_first_scrape() -> None:
    families = exposition(web_families({("session", "hit"): 3}, {("failure",): 2}))
    assert value(families, "logonmesh_mirror_hits", "logonmesh_mirror_hits_total", kind="session") == 3
    assert value(families, "logonmesh_mirror_misses", "logonmesh_mirror_misses_total", kind="record") == 0
    assert value(families, "logonmesh_logins", "logonmesh_logins_total", outcome="failure") == 2
    assert value(families, "logonmesh_logins", "logonmesh_logins_total", outcome="throttled") == 0


class FakeDaemon:
    """Answers `metrics` with fixed figures, or (``down``) as a daemon that is not there."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        self.calls.append(op)
        if self.down:
            raise DaemonUnavailable("no daemon")
        if op == "metrics":
            return FIGURES
        raise AssertionError(f"unexpected op {op}")

    def close(self) -> None:
        pass


def app_with(daemon: FakeDaemon, tmp_path: Any, name: str, metrics: bool = True) -> Flask:
    app = Flask(name)
    app.config.update(LOGONMESH_NODE=name, LOGONMESH_COOKIE="c" * 32, LOGONMESH_RUN_DIR=str(tmp_path / name))
    LogonMesh(app).init_app(app, client=daemon)  # type: ignore[arg-type]
    if metrics:
        app.register_blueprint(metrics_blueprint())

    @app.get("/items/<int:n>")
    def item(n: int) -> str:
        return "ok"
    return app


def test_two_apps_in_one_process_have_their_own_registry(tmp_path: Any) -> None:
    daemon = FakeDaemon()
    a, b = app_with(daemon, tmp_path, "a"), app_with(daemon, tmp_path, "b")
    a.test_client().get("/items/1")
    a.test_client().get("/items/2")
    families_a = parse(a.test_client().get("/metrics").get_data(as_text=True))
    families_b = parse(b.test_client().get("/metrics").get_data(as_text=True))
    key = ("logonmesh_http_request_duration_seconds_count",
           (("endpoint", "item"), ("method", "GET"), ("status", "200")))
    assert families_a["logonmesh_http_request_duration_seconds"][key] == 2  # by endpoint: /items/1 and /2 together
    assert key not in families_b["logonmesh_http_request_duration_seconds"]
    assert daemon.calls == ["metrics", "metrics"]  # one ipc call per scrape


def test_latency_labels_never_hold_the_path(tmp_path: Any) -> None:
    app = app_with(FakeDaemon(), tmp_path, "a")
    client = app.test_client()
    client.get("/items/12345")
    client.get("/no/such/page/secret-ish")
    client.open("/items/1", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    assert "12345" not in text and "secret-ish" not in text and "BREW" not in text
    labels = {s.labels.get("endpoint") for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"item", "none"} <= labels


def test_the_daemon_down_scrape_still_answers(tmp_path: Any) -> None:
    daemon = FakeDaemon()
    daemon.down = True
    resp = app_with(daemon, tmp_path, "a").test_client().get("/metrics")
    assert resp.status_code == 200
    families = parse(resp.get_data(as_text=True))
    assert value(families, "logonmesh_daemon_up") == 0
    assert WEB_FAMILIES <= set(families) and not DAEMON_FAMILIES & set(families)


def test_the_extension_imposes_no_route(tmp_path: Any) -> None:
    app = app_with(FakeDaemon(), tmp_path, "a", metrics=False)
    assert app.test_client().get("/metrics").status_code == 404


# ---- real processes: two demo nodes ------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    env = {"LOGONMESH_THROTTLE_USER": str(THROTTLE_USER), "LOGONMESH_THROTTLE_ADDR": "1000000",
           "LOGONMESH_THROTTLE_WINDOW": "120"}
    with LocalCluster(env=env) as c:
        c.start_nodes("node", 2)
        yield c


def scrape(node: Node) -> tuple[str, dict]:
    resp = requests.get(f"{node.url}/metrics", timeout=5)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return resp.text, parse(resp.text)


def logins(families: dict, outcome: str) -> float:
    return value(families, "logonmesh_logins", "logonmesh_logins_total", outcome=outcome)


def counter(families: dict, name: str) -> float:
    return value(families, name, name + "_total")


def test_every_family_is_there_on_every_node(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        _, families = scrape(node)
        assert WEB_FAMILIES | DAEMON_FAMILIES <= set(families), sorted(WEB_FAMILIES | DAEMON_FAMILIES - set(families))
        assert value(families, "logonmesh_daemon_up") == 1
        assert value(families, "logonmesh_peers_up") == 1 and value(families, "logonmesh_peers_known") == 1


def test_one_ipc_call_per_scrape(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    before = node.status()["stats"].get("ipc_metrics", 0)
    scrape(node)
    assert node.status()["stats"].get("ipc_metrics", 0) == before + 1


def test_counters_move_with_logins_and_nothing_personal_leaks(cluster: LocalCluster) -> None:
    n1, n2 = cluster.nodes
    _, before1 = scrape(n1)
    _, before2 = scrape(n2)
    b, username = Browser(n1.url), f"metrics-{uuid.uuid4().hex[:10]}"
    assert b.signup(username, PASSWORD).status_code == 302
    eventually(lambda: n2.call("user", username=username) or pytest.fail("not replicated yet"))
    assert b.login(username, PASSWORD).headers.get("Location") == "/budget"
    assert b.authenticated()
    for _ in range(THROTTLE_USER):
        assert b.login(username, "wrong password").status_code == 200
    assert b.login(username, PASSWORD).status_code == 429

    text, after1 = scrape(n1)
    assert logins(after1, "success") == logins(before1, "success") + 1
    assert logins(after1, "failure") == logins(before1, "failure") + THROTTLE_USER
    assert logins(after1, "throttled") == logins(before1, "throttled") + 1
    assert counter(after1, "logonmesh_merges_published") > counter(before1, "logonmesh_merges_published")
    looked_up = sum(value(after1, f, f + "_total", kind="session") for f in ("logonmesh_mirror_hits",
                                                                               "logonmesh_mirror_misses"))
    assert looked_up > sum(value(before1, f, f + "_total", kind="session") for f in ("logonmesh_mirror_hits",
                                                                                       "logonmesh_mirror_misses"))
    login_count = ("logonmesh_http_request_duration_seconds_count",
                   (("endpoint", "auth.login"), ("method", "POST"), ("status", "429")))
    assert after1["logonmesh_http_request_duration_seconds"][login_count] >= 1

    def applied_on_n2() -> None:
        _, after2 = scrape(n2)
        assert counter(after2, "logonmesh_merges_applied") > counter(before2, "logonmesh_merges_applied")
        assert value(after2, "logonmesh_users") >= value(before2, "logonmesh_users") + 1
    eventually(applied_on_n2)

    secrets = {username, "127.0.0.1", cluster.cookie, *b.session.cookies.values()}
    snapshot = n1.call("sessions_snapshot")["entries"]
    secrets |= {key for kind, key, *_ in snapshot if kind in ("s", "d")}  # every token and session id
    for node_text in (text, scrape(n2)[0]):
        leaked = sorted(s for s in secrets if s and s in node_text)
        assert not leaked, leaked


def test_a_stopped_daemon_scrapes_as_daemon_up_zero(cluster: LocalCluster) -> None:
    node = cluster.nodes[1]
    node.daemon.stop()
    try:
        def down() -> dict:
            families = scrape(node)[1]
            assert value(families, "logonmesh_daemon_up") == 0
            return families
        families = eventually(down)
        assert WEB_FAMILIES <= set(families) and not DAEMON_FAMILIES & set(families)
    finally:
        node.daemon.start()
        cluster.wait_ready()
    eventually(lambda: value(scrape(node)[1], "logonmesh_daemon_up") == 1 or pytest.fail("daemon not back"),
               timeout=10)


def test_operations_doc_lists_every_metric(tmp_path: Any) -> None:
    """docs/operations.md is the operator's list: whatever a scrape can show must be written down there."""
    from pathlib import Path
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    text = app_with(FakeDaemon(), tmp_path, "a").test_client().get("/metrics").get_data(as_text=True)
    names = {f.name for f in text_string_to_metric_families(text)} | {f.name for f in daemon_families(FIGURES)}
    names.discard("logonmesh_http_request_duration_seconds_created")  # prometheus_client's own, named in the doc
    assert WEB_FAMILIES | DAEMON_FAMILIES <= names
    missing = [name for name in sorted(names) if not any(f"`{name}{suffix}`" in doc for suffix in ("", "_total"))]
    assert not missing, f"docs/operations.md does not list: {missing}"
