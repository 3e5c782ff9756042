"""The two times the replica reads, behind one small interface so tests can drive them.

The core never calls ``time`` itself: the shell gives it a ``SystemClock``,
tests a fake one they advance by hand, so a history of events replays the same
way every time.  Monotonic time measures silence (liveness, repair timeouts);
wall time stamps versions and decides expiry.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def mono_ms(self) -> float:
        """Milliseconds on a clock that never jumps: what silence is measured with."""

    def wall_ms(self) -> int:
        """Milliseconds since the epoch: what versions and expiries are made of."""


class SystemClock:
    def mono_ms(self) -> float:
        return time.monotonic() * 1000

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


SYSTEM = SystemClock()


class StepWatch:
    """Notices when a clock's wall time steps (NTP, a resumed VM): wall minus monotonic time jumps.

    Expiries are kept in wall time, so whoever holds them must move them by
    the step, or a step back lengthens every lifetime by as much.  Moves up to
    ``threshold_ms`` (slewing, noise) are absorbed as they come.
    """

    def __init__(self, threshold_ms: int, clock: Clock = SYSTEM) -> None:
        self.threshold_ms = threshold_ms
        self.clock = clock
        self._base = clock.wall_ms() - clock.mono_ms()

    def step(self) -> int:
        """The step since the last call in ms, or 0 if the clock only moved as time does (within the threshold)."""
        now = self.clock.wall_ms() - self.clock.mono_ms()
        moved = round(now - self._base)
        self._base = now
        return moved if abs(moved) > self.threshold_ms else 0
