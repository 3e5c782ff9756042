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
