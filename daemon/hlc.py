"""Hybrid logical clock (Kulkarni et al.), packed in 64 bits.

The high 48 bits are milliseconds since the epoch, the low 16 a counter.  A
version stays close to wall time, yet every event a node stamps is strictly
later than anything it has seen, so last-writer-wins never goes backwards.
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
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.last = 0

    def now(self) -> int:
        """A timestamp later than every one issued or observed here."""
        self.last = max(self.last + 1, physical(int(self._clock() * 1000)))
        return self.last

    def observe(self, remote: int) -> None:
        """Take a remote timestamp into account so the next local one follows it."""
        if remote > self.last:
            self.last = remote
