"""What a daemon refuses, and how it says so without flooding its log.

``ReplayWindow`` rejects a peer-socket message that was seen before, or is too
old to tell, the way IPsec's anti-replay window does: the bus has strict
sequence numbers, but the peer socket's messages can be reordered across
connections, so a window of recent sequence numbers is kept per sender.

``Refusals`` counts every refused frame by where and why (and by sender when
the signature proved who sent it), and logs each kind at most once per
interval with the count since the last line: a peer that keeps sending junk
is visible without a line per message.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict

log = logging.getLogger(__name__)

WINDOW = 4096
LOG_INTERVAL_S = 10.0


class ReplayWindow:
    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._senders: dict[str, tuple[int, int, set[int]]] = {}  # sender -> (incarnation, highest, seen)

    def accept(self, sender: str, incarnation: int, seq: int) -> bool:
        known = self._senders.get(sender)
        if known is None or incarnation > known[0]:
            self._senders[sender] = (incarnation, seq, {seq})
            return True
        inc, highest, seen = known
        if incarnation < inc or seq <= highest - self.window or seq in seen:
            return False
        seen.add(seq)
        if seq > highest:
            highest = seq
            if len(seen) > 2 * self.window:
                seen.difference_update([s for s in seen if s <= highest - self.window])
        self._senders[sender] = (inc, highest, seen)
        return True


class Refusals:
    def __init__(self, stats: Counter, interval_s: float = LOG_INTERVAL_S) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self.by_sender: defaultdict[str, Counter] = defaultdict(Counter)
        self._pending: Counter = Counter()
        self._last_log: dict[tuple[str, str], float] = {}

    def refuse(self, where: str, reason: str, sender: str | None = None, detail: str = "") -> None:
        self.stats[f"drop_{reason}"] += 1
        if sender is not None:
            self.by_sender[sender][reason] += 1
        key = (where, reason)
        self._pending[key] += 1
        now = time.monotonic()
        if now - self._last_log.get(key, -self.interval_s) >= self.interval_s:
            count = self._pending.pop(key)
            self._last_log[key] = now
            who = f" from {sender}" if sender else ""
            log.warning("refused %d frame(s) on the %s%s: %s%s", count, where, who, reason,
                        f" ({detail})" if detail else "")

    def view(self) -> dict[str, dict[str, int]]:
        return {sender: dict(reasons) for sender, reasons in sorted(self.by_sender.items())}
