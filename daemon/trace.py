"""An opt-in trace of merge propagation, for the benchmark (``--trace`` / ``LOGONMESH_TRACE``).

When on, the daemon records, per user key, the moment it published a local
merge of that user and the moment it applied a merge of that user heard on
the bus, both from ``time.monotonic_ns()``.  On Linux CLOCK_MONOTONIC is one
clock for every process of the host, so a publish time on daemon A and an
apply time on daemon B subtract to a one-way latency without any clock sync.

Only users are traced (their keys are usernames): session keys are secret
tokens and never leave the daemon this way.  Each table is bounded, so a trace
left on by mistake costs at most ``LIMIT`` keys of memory.  When off, the
daemon holds ``None`` and pays one ``is not None`` test per merge.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

LIMIT = 1_000_000


class Trace:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.published: dict[str, int] = {}
        self.applied: dict[str, int] = {}
        self.dropped = 0

    def on_publish(self, entries: Sequence[Sequence[Any]]) -> None:
        self._record(self.published, entries)

    def on_apply(self, entries: Sequence[Sequence[Any]]) -> None:
        self._record(self.applied, entries)

    def _record(self, table: dict[str, int], entries: Sequence[Sequence[Any]]) -> None:
        t = time.monotonic_ns()
        for entry in entries:
            if entry[0] != "u":
                continue
            if len(table) >= self.limit:
                self.dropped += 1
                continue
            table.setdefault(entry[1], t)  # the first time counts: a re-send is not a new merge

    def take(self) -> dict:
        """What was recorded since the last take, and clear it."""
        out = {"published": self.published, "applied": self.applied, "dropped": self.dropped}
        self.published, self.applied, self.dropped = {}, {}, 0
        return out
