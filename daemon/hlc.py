"""Hybrid logical clock (Kulkarni et al.), packed in 64 bits, bounded by a maximum clock offset.

The high 48 bits are milliseconds since the epoch, the low 16 a counter.  A
version stays close to wall time, yet every event a node stamps is later than
what it has seen, so last-writer-wins follows causality.

Unbounded, one node with a clock minutes fast drags every node that hears it
minutes into the future, for good.  So, as the HLC paper assumes a bound ε on
clock error and CockroachDB enforces its maximum offset, a remote timestamp
more than ``max_offset_ms`` ahead of our wall clock is not taken into the
clock (``observe`` returns False, for the caller to count): our versions stay
within the bound of our own wall time.  Causality on one key is kept anyway
by ``after``: a write to a key is stamped above the version it replaces,
however far ahead that version is.
"""

from __future__ import annotations

import time
from typing import Callable

COUNTER_BITS = 16


def physical(ms: int) -> int:
    return ms << COUNTER_BITS


def wall_ms(hlc: int) -> int:
    return hlc >> COUNTER_BITS


class HLC:
    def __init__(self, clock: Callable[[], float] = time.time, max_offset_ms: int | None = None) -> None:
        self._clock = clock
        self.max_offset_ms = max_offset_ms
        self.last = 0

    def _physical_now(self) -> int:
        return physical(int(self._clock() * 1000))

    def now(self, after: int = 0) -> int:
        """A timestamp later than every one issued or observed here, and than ``after``.

        ``after`` (the version a write replaces) lifts this one stamp only, not
        the clock: a key last written by a fast node drags nothing else along.
        """
        self.last = max(self.last + 1, self._physical_now())
        return max(self.last, after + 1)

    def observe(self, remote: int) -> bool:
        """Take a remote timestamp into account so the next local one follows it.

        Returns False, and leaves the clock alone, when the timestamp is beyond
        the maximum offset ahead of our wall clock.
        """
        if remote <= self.last:
            return True
        if self.max_offset_ms is not None and remote > self._physical_now() + physical(self.max_offset_ms):
            return False
        self.last = remote
        return True
