"""How far a peer's clock is from ours, measured the way NTP does, from pings and heartbeats.

Every frame carries its sender's wall clock (``wire.Envelope.sent_at``).  A
heartbeat alone gives a one-way sample, ``sent_at - received``, which is the
offset minus the transit time.  A ping gives the real thing: we send at our
``t0``, the peer answers at its ``t1`` (the pong's ``sent_at``), we receive at
our ``t3``; the offset is ``t1 - (t0 + t3) / 2``, wrong by at most half the
round trip ``t3 - t0``.  As NTP's clock filter does, the estimate is the
sample with the shortest round trip among the last few, since queueing only
ever adds delay.

The estimate is what the node rebases a peer's expiries with (an expiry in the
peer's clock is ``offset`` ms later in ours), so lifetimes do not depend on
the two clocks agreeing.  No I/O here: the replica feeds it times.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PING_SAMPLES = 4   # pongs kept per peer: a clock that steps shows within this many pings


@dataclass
class Offset:
    """One peer's clock offset (its clock minus ours), as well as we can tell it."""

    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=PING_SAMPLES))
    one_way: float | None = None     # the latest heartbeat's sent_at - received: offset minus transit

    def on_pong(self, t0: float, t1: float, t3: float) -> None:
        """A pong: our send time, its send time, our receive time (all ms, each on its own clock)."""
        rtt = t3 - t0
        if rtt >= 0:
            self.samples.append((t1 - (t0 + t3) / 2, rtt))

    def on_frame(self, sent_at: float, received: float) -> None:
        self.one_way = sent_at - received

    @property
    def ms(self) -> float | None:
        """The estimate: the pong with the shortest round trip, else the last one-way sample, else None."""
        if self.samples:
            return min(self.samples, key=lambda s: s[1])[0]
        return self.one_way

    @property
    def rtt_ms(self) -> float | None:
        return min(s[1] for s in self.samples) if self.samples else None

    def beyond(self, limit_ms: float) -> bool:
        offset = self.ms
        return offset is not None and abs(offset) > limit_ms

    def view(self, limit_ms: float) -> dict[str, float | bool | None]:
        offset, rtt = self.ms, self.rtt_ms
        return {"clock_offset_ms": None if offset is None else round(offset, 1),
                "clock_rtt_ms": None if rtt is None else round(rtt, 2),
                "clock_skewed": self.beyond(limit_ms)}
