"""``python -m logonmesh …`` is the ``logonmesh`` command, whatever folders the working directory holds.

It is also how the harness starts every node, so it is the one place that
makes a node run under libfaketime (``logonmesh.testing``: a skewed clock).
"""

from __future__ import annotations

import os
from typing import SupportsIndex


def _sleep_without_absolute_timers() -> None:
    """Make ``time.sleep`` a relative wait, before anything imports it.

    With FAKETIME_DONT_FAKE_MONOTONIC (which the harness needs: an NTP step
    never moves CLOCK_MONOTONIC), libfaketime 0.9.10 mangles
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which CPython's
    ``time.sleep`` uses: every sleep, even ``sleep(0)``, raises EINVAL (so does
    ``Popen.wait`` with a timeout, which sleeps).  A relative timeout, as
    select's, is not affected.
    """
    import select
    import time

    try:
        time.sleep(0)
        return  # a libfaketime without the bug
    except OSError:
        pass

    def relative_sleep(seconds: float | SupportsIndex) -> None:
        remaining = float(seconds)
        if remaining < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = time.monotonic() + remaining
        while True:
            select.select([], [], [], remaining)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return

    time.sleep = relative_sleep


if "faketime" in os.environ.get("LD_PRELOAD", ""):
    _sleep_without_absolute_timers()

from logonmesh.cli import main  # noqa: E402  (after the clock shim, which must come before any import of time.sleep)

main(prog_name="logonmesh")
