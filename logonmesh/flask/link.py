"""The web's door to its daemon: the daemon client, plus a short memory of a daemon that went silent.

A silent daemon (frozen, overloaded) costs each call the full client timeout.
With 8 waitress threads, a burst of requests would then wait in waves of 1 s
each, and the last ones would get their 503 long after 2 s.  So after a call
times out, calls fail at once for a moment; then one call at a time is let
through to find out whether the daemon is back, and the first answer reopens
the door for every thread.  A missing socket fails fast by itself and does not
trip this, so a restarted daemon is used as soon as its socket appears.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from logonmesh.daemon.client import DaemonClient, DaemonUnavailable

SILENT_FOR_S = 1.0   # how long to answer 503 at once after a timeout
SLOW_CALL_S = 0.25   # a DaemonUnavailable that took this long was a timeout, not a missing socket


class DaemonLink:
    def __init__(self, client: DaemonClient, silent_for_s: float = SILENT_FOR_S) -> None:
        self.client = client
        self.silent_for_s = silent_for_s
        self._silent_until = 0.0
        self._tripped = False
        self._probe = threading.Lock()

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        """Like DaemonClient.call, but fails fast while the daemon is known to be silent."""
        probing = self._enter()
        started = time.monotonic()
        try:
            result = self.client.call(op, timeout_ms=timeout_ms, **args)
        except DaemonUnavailable:
            if time.monotonic() - started >= SLOW_CALL_S:
                self._silent_until = time.monotonic() + self.silent_for_s
                self._tripped = True
            raise
        finally:
            if probing:
                self._probe.release()
        self._tripped = False
        return result

    def _enter(self) -> bool:
        """Return whether this call is the one probe; raise if the call may not go to the daemon now."""
        if not self._tripped:
            return False
        if time.monotonic() >= self._silent_until and self._probe.acquire(blocking=False):
            return True
        raise DaemonUnavailable("the daemon did not answer a moment ago")

    def close(self) -> None:
        self.client.close()
