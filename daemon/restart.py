"""The restart policy of a long-lived thread: back off and start again, but not forever.

A thread that dies quietly leaves its process half alive: the daemon's loop
keeps heartbeating while no job ever completes, or the web keeps serving from
a mirror that no longer follows the feed.  So each such thread runs its body
in a loop that logs a failure with its cause and asks this policy what next:
wait a little longer each time (a file briefly locked or replaced, a daemon
restarting) and start again, or, after ``limit`` failures within ``window_s``,
give up so that the caller stops the whole process with a clear message and a
supervisor can start a fresh one.  Pure logic with an injectable clock.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

LIMIT = 5            # failures within the window that make a thread give up
WINDOW_S = 60.0      # a failure older than this is forgiven
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 4.0


class Restarts:
    def __init__(self, limit: int = LIMIT, window_s: float = WINDOW_S, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._failures: collections.deque[float] = collections.deque()

    def failed(self) -> float | None:
        """Record one failure; return the seconds to wait before restarting, or None to give up."""
        now = self._clock()
        self._failures.append(now)
        while now - self._failures[0] > self.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.limit:
            return None
        return min(self.max_delay_s, self.first_delay_s * 2 ** (len(self._failures) - 1))

    @property
    def recent(self) -> int:
        """Failures still inside the window (what the log and the give-up message report)."""
        return len(self._failures)

    def describe(self) -> str:
        return f"{self.recent} failures in {self.window_s:g} s"
