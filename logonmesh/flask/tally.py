"""Counts kept by the request threads and read by a metrics scrape: a few named integers under one lock.

Not ``prometheus_client`` objects, so the parts that count (the mirror, the
login path) work the same whether or not the app serves ``/metrics``; the
scrape turns a snapshot of them into metric families (``logonmesh.flask.metrics``).
"""

from __future__ import annotations

import threading
from collections import Counter


class Tally:
    """Thread-safe counters by a key (a tuple of label values, never a name, token or address)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def add(self, *key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._counts)
