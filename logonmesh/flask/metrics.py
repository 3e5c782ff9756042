"""``GET /metrics``: the node in the Prometheus text format, for an app that registers ``metrics_blueprint()``.

The extension adds no route by itself, so an app chooses whether (and where)
to serve its metrics::

    app.register_blueprint(metrics_blueprint())          # GET /metrics

Each app gets its own ``CollectorRegistry`` (never the global one: a test
process may hold several apps).  A scrape asks the node's daemon once (the
ipc op ``metrics``); a daemon that does not answer leaves the web's own
figures and ``logonmesh_daemon_up 0``, still with status 200, so the scrape
itself says what is wrong.  No label or value carries a username, token,
session id or address: the labels are drop reasons, outcomes, kinds of
lookup, Flask endpoints (never the raw path), methods and status codes.
docs/operations.md lists every metric.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator, cast

from flask import Blueprint, Flask, Response, current_app, g, request, request_started
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from logonmesh.flask.errors import MeshError
from logonmesh.flask.state import EXTENSION, MeshState

log = logging.getLogger(__name__)

METRICS = EXTENSION + ".metrics"
SCRAPE_TIMEOUT_MS = 500   # well inside Prometheus's default 10 s scrape timeout, even with a retry in the link
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LOOKUP_KINDS = ("session", "record", "session_data")
LOGIN_OUTCOMES = ("success", "failure", "throttled")

# daemon figure -> (metric name, help); gauges, then counters (the name gains "_total" in the exposition)
DAEMON_GAUGES = {
    "peers_up": ("logonmesh_peers_up", "Peers this node's daemon sees up."),
    "peers_known": ("logonmesh_peers_known", "Peers this node's daemon knows of, up or not."),
    "users": ("logonmesh_users", "Users in this node's replica."),
    "sessions": ("logonmesh_sessions", "Live login sessions in this node's replica."),
    "session_tombstones": ("logonmesh_session_tombstones", "Revoked sessions still remembered (tombstones)."),
    "session_data": ("logonmesh_session_data", "Live server-side session data entries in this node's replica."),
    "records": ("logonmesh_records", "Live app records in this node's replica."),
    "uptime_s": ("logonmesh_daemon_uptime_seconds", "Seconds since this node's daemon started (counters reset then)."),
}
DAEMON_COUNTERS = {
    "merges_published": ("logonmesh_merges_published", "Merge messages this daemon published on the bus."),
    "merges_applied": ("logonmesh_merges_applied", "Merge messages this daemon received from peers and merged."),
    "repairs_started": ("logonmesh_repairs_started", "Anti-entropy repairs this daemon started."),
    "repairs_done": ("logonmesh_repairs_done", "Repairs this daemon started that finished their exchange."),
    "repairs_failed": ("logonmesh_repairs_failed", "Repairs abandoned on a malformed reply."),
    "repairs_timed_out": ("logonmesh_repairs_timed_out", "Repairs abandoned because the peer stopped answering."),
    "clock_offset_warnings": ("logonmesh_clock_offset_warnings",
                              "Warnings that a peer's clock is beyond --max-clock-offset-ms."),
}


def metrics_blueprint(url: str = "/metrics", name: str = "logonmesh_metrics") -> Blueprint:
    """A blueprint serving the app's metrics at ``url``, and timing every request of the app by endpoint."""
    bp = Blueprint(name, __name__)
    bp.record_once(_install)
    bp.add_url_rule(url, "metrics", _scrape, methods=["GET"])
    return bp


def _install(setup: BlueprintSetupState) -> None:
    app = cast(Flask, setup.app)  # typed as sansio's App, of which Flask is the one we serve
    if METRICS not in app.extensions:
        app.extensions[METRICS] = WebMetrics(app)


def _scrape() -> Response:
    body = generate_latest(current_app.extensions[METRICS].registry)
    response = Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


class WebMetrics:
    """One app's registry: the request-latency histogram, and a collector asked at each scrape."""

    def __init__(self, app: Flask) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("logonmesh_http_request_duration_seconds",
                                 "Time to answer a request, by Flask endpoint (never the path), method and status.",
                                 ("endpoint", "method", "status"), registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(MeshCollector(app))
        # request_started fires before any before_request hook, so a request refused by one (CSRF) is timed too
        request_started.connect(self._started, app, weak=False)
        app.after_request(self._finished)

    @staticmethod
    def _started(sender: Flask, **_: Any) -> None:
        g._logonmesh_started = time.perf_counter()

    def _finished(self, response: Response) -> Response:
        started = g.pop("_logonmesh_started", None)
        if started is not None:
            method = request.method if request.method in METHODS else "other"
            self.latency.labels(request.endpoint or "none", method, str(response.status_code)).observe(
                time.perf_counter() - started)
        return response


class MeshCollector(Collector):
    """At each scrape: the web's tallies (mirror, logins) and the daemon's figures, fetched in one ipc call."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration: the names are fixed, and asking the daemon then is no use

    def collect(self) -> Iterator[Metric]:
        state: MeshState | None = self.app.extensions.get(EXTENSION)
        if state is None:  # the blueprint was registered before LogonMesh.init_app, and nothing has run since
            yield from daemon_families(None)
            return
        yield from web_families(state.mirror.lookups.snapshot(), state.logins.snapshot())
        yield from daemon_families(fetch(state))


def fetch(state: MeshState) -> dict[str, Any] | None:
    """The daemon's figures (the ipc op ``metrics``), or None when it does not answer."""
    try:
        figures = state.call("metrics", timeout_ms=SCRAPE_TIMEOUT_MS)
    except MeshError as exc:
        log.debug("metrics: the daemon did not answer (%s)", exc)
        return None
    return figures if isinstance(figures, dict) else None


def web_families(lookups: dict[tuple[str, ...], int], logins: dict[tuple[str, ...], int]) -> list[Metric]:
    """The web's own counters; every label value is listed, so each series exists from the first scrape at 0."""
    hits = CounterMetricFamily("logonmesh_mirror_hits", "Lookups answered from the web's session mirror.",
                               labels=["kind"])
    misses = CounterMetricFamily("logonmesh_mirror_misses",
                                 "Lookups the mirror could not vouch for, so the daemon was asked.", labels=["kind"])
    for kind in LOOKUP_KINDS:
        hits.add_metric([kind], lookups.get((kind, "hit"), 0))
        misses.add_metric([kind], lookups.get((kind, "miss"), 0))
    attempts = CounterMetricFamily("logonmesh_logins", "Login attempts by outcome (throttled: answered 429).",
                                   labels=["outcome"])
    for outcome in LOGIN_OUTCOMES:
        attempts.add_metric([outcome], logins.get((outcome,), 0))
    return [hits, misses, attempts]


def daemon_families(figures: dict[str, Any] | None) -> list[Metric]:
    """``logonmesh_daemon_up``, and when the daemon answered, its figures as gauges and counters."""
    up = GaugeMetricFamily("logonmesh_daemon_up", "1 when this node's daemon answered the scrape, else 0.")
    up.add_metric([], 0 if figures is None else 1)
    if figures is None:
        return [up]
    found: list[Metric] = [up]
    # a figure the daemon did not give (another version) is left out, rather than shown as a 0 that alerts
    found += [GaugeMetricFamily(name, text, value=_number(figures[key]))
              for key, (name, text) in DAEMON_GAUGES.items() if key in figures]
    found += [CounterMetricFamily(name, text, value=_number(figures[key]))
              for key, (name, text) in DAEMON_COUNTERS.items() if key in figures]
    refused = CounterMetricFamily("logonmesh_frames_refused", "Frames the daemon refused, by reason (docs/wire.md §7).",
                                  labels=["reason"])
    for reason, n in sorted((figures.get("refused") or {}).items()):
        refused.add_metric([str(reason)], _number(n))
    repair_bytes = CounterMetricFamily("logonmesh_repair_bytes", "Bytes of repair traffic, by direction.",
                                       labels=["direction"])
    repair_bytes.add_metric(["in"], _number(figures.get("repair_bytes_in")))
    repair_bytes.add_metric(["out"], _number(figures.get("repair_bytes_out")))
    return [*found, refused, repair_bytes]


def _number(value: Any) -> float:
    """A figure as Prometheus takes it; one that is not a number is 0, never a crash of the scrape."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
