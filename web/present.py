"""How the pages show numbers: money, ages, clock offsets, the cluster's peers table and its heartbeat chart.

Everything here turns daemon answers into plain values for the templates, so
the templates stay free of arithmetic and the charts are drawn server-side as
SVG elements with classes (the CSP allows no inline style and no script).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

MINUS = "\u2212"  # a real minus sign: it lines up with digits and reads as "minus"


def money(cents: int) -> str:
    """1234550 -> '12,345.50'; -300 -> '−3.00'."""
    units, rest = divmod(abs(cents), 100)
    return f"{MINUS if cents < 0 else ''}{units:,}.{rest:02d}"


def ago(ms: float | None) -> str:
    """A duration as a person reads it: '85 ms', '1.2 s', '3 min', '2 h'."""
    if ms is None:
        return "never"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.0f} min"
    return f"{ms / 3_600_000:.0f} h"


def budget_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user's budget entries (web.budget.listing), newest first, with what the table shows."""
    rows = []
    for entry in reversed(entries):
        created = str(entry.get("created_at", ""))
        rows.append({"id": entry["id"], "label": entry["label"], "amount": money(entry["cents"]),
                     "negative": entry["cents"] < 0, "created_at": created,
                     "date": created[:10], "time": created[11:16]})
    return rows


# ---- the cluster page ----------------------------------------------------------------

def offset(ms: float | None, skewed: bool = False) -> str:
    """A peer's clock minus this node's, signed: '+0.3 ms', '−12 ms', '+300.0 s'; '?' until measured; '!' when
    beyond the maximum (as `logonmesh peers` writes it, with the pages' spaced units)."""
    if ms is None:
        return "?"
    size = _magnitude(ms)
    return (MINUS if ms < 0 and size != "0.0 ms" else "+") + size + (" !" if skewed else "")


def _magnitude(ms: float) -> str:
    size = abs(ms)
    if size < 9.95:
        return f"{size:.1f} ms"
    if size < 999.5:
        return f"{size:.0f} ms"
    if size < 3_600_000:
        return f"{size / 1000:.1f} s"
    return f"{size / 3_600_000:.1f} h"


def clock_notes(me: str, view: dict[str, Any]) -> list[str]:
    """A sentence per peer whose clock is beyond the maximum offset: how far, which way, and the maximum."""
    limit = view.get("max_clock_offset_ms")
    notes = []
    for p in sorted(view["peers"], key=lambda p: p["name"]):
        ms = p.get("clock_offset_ms")
        if ms is not None and _skewed(p, limit):
            way = "behind" if ms < 0 else "ahead of"
            beyond = f"the {_magnitude(limit)} maximum" if limit is not None else "--max-clock-offset-ms"
            notes.append(f"{p['name']}'s clock is {_magnitude(ms)} {way} {me}'s, beyond {beyond}.")
    return notes


def _skewed(peer: dict[str, Any], limit: float | None) -> bool:
    """The daemon's verdict; for a daemon that gives an offset without one, judged against its maximum."""
    if peer.get("clock_skewed") is not None:
        return bool(peer["clock_skewed"])
    ms = peer.get("clock_offset_ms")
    return ms is not None and limit is not None and abs(ms) > limit


def peer_rows(me: str, view: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per node, this one included, as `logonmesh peers` shows them (without the registry's columns)."""
    limit = view.get("max_clock_offset_ms")
    rows = [{"name": me, "state": "self", "up": True, "heard": "—", "last_seq": "—", "digest": "—",
             "offset": "—", "skewed": False, "reason": "this node", "in_registry": True, "endpoint": ""}]
    for p in sorted(view["peers"], key=lambda p: p["name"]):
        if p["up"]:
            state, reason = "up", ""
        elif p["heard_ms_ago"] is None:
            state, reason = "unseen", "in the table, never heard on the bus"
        else:
            state, reason = "down", p["reason"] or "no reason given"
        if not p["in_registry"]:
            reason = f"{reason} (no longer in the table)".strip()
        digest = "—" if p["digest_match"] is None or not p["up"] else ("same" if p["digest_match"] else "differs")
        skewed = _skewed(p, limit)
        rows.append({"name": p["name"], "state": state, "up": p["up"],
                     "heard": ago(p["heard_ms_ago"]) if p["heard_ms_ago"] is not None else "never",
                     "last_seq": p["last_seq"] if p["last_seq"] else "—", "digest": digest,
                     "offset": offset(p.get("clock_offset_ms"), skewed), "skewed": skewed, "reason": reason,
                     "in_registry": p["in_registry"], "endpoint": p["bus"].split("://", 1)[-1]})
    return rows


# The chart's geometry, in SVG user units; CSS scales the whole drawing to the column's width.
CHART_W, CHART_H = 440, 120
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 52, 8, 12, 22
BAR_SLOTS = 31  # 30 kept gaps (daemon.membership.BEAT_SAMPLES) and the open one: time since the last message


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    ms: int
    kind: str            # "ok", "late", "over" (past the down limit) or "open" (still waiting)


@dataclass
class Chart:
    peer: str
    bars: list[Bar]
    lines: list[dict[str, Any]]
    summary: str
    width: int = CHART_W
    height: int = CHART_H
    plot: dict[str, float] = field(default_factory=dict)


def beat_chart(peer: dict[str, Any], heartbeat_ms: int, down_after_ms: int) -> Chart:
    """Bars of the recent gaps between a peer's heartbeats, against the heartbeat period and the down limit.

    The scale tops out a little above the down limit, so a healthy peer's bars
    are readable; a longer gap (a partition, a pause) is drawn to the top and
    marked "over".  The last bar is the time since anything was heard.
    """
    gaps = [int(g) for g in peer.get("beat_gaps_ms") or []][-(BAR_SLOTS - 1):]
    top = max(down_after_ms * 1.2, heartbeat_ms * 2, 1)
    plot_w = CHART_W - PLOT_LEFT - PLOT_RIGHT
    plot_h = CHART_H - PLOT_TOP - PLOT_BOTTOM
    slot = plot_w / BAR_SLOTS

    def y_of(ms: float) -> float:
        return PLOT_TOP + plot_h * (1 - min(ms, top) / top)

    def bar(i: int, ms: int, kind: str) -> Bar:
        y = y_of(ms)
        height = max(PLOT_TOP + plot_h - y, 1.0)
        return Bar(x=round(PLOT_LEFT + i * slot + slot * 0.15, 2), y=round(PLOT_TOP + plot_h - height, 2),
                   width=round(slot * 0.7, 2), height=round(height, 2), ms=ms, kind=kind)

    def kind_of(ms: int) -> str:
        if ms > down_after_ms:
            return "over"
        return "late" if ms > heartbeat_ms * 1.5 else "ok"

    offset = BAR_SLOTS - 1 - len(gaps)  # right-aligned: the newest gap sits next to the open bar
    bars = [bar(offset + i, ms, kind_of(ms)) for i, ms in enumerate(gaps)]
    if peer.get("heard_ms_ago") is not None:
        waiting = int(peer["heard_ms_ago"])
        bars.append(bar(BAR_SLOTS - 1, waiting, "over" if waiting > down_after_ms else "open"))
    lines = [
        {"kind": "beat", "y": round(y_of(heartbeat_ms), 2), "label": ago(heartbeat_ms)},
        {"kind": "limit", "y": round(y_of(down_after_ms), 2), "label": ago(down_after_ms)},
    ]
    if gaps:
        summary = (f"Last {len(gaps)} heartbeats from {peer['name']}: typically {ago(statistics.median(gaps))} "
                   f"apart, the longest gap {ago(max(gaps))}. A peer is down after {ago(down_after_ms)} of silence.")
    else:
        summary = f"No heartbeats heard from {peer['name']} yet."
    plot: dict[str, float] = {"left": PLOT_LEFT, "right": CHART_W - PLOT_RIGHT,
                              "top": PLOT_TOP, "bottom": PLOT_TOP + plot_h}
    return Chart(peer=peer["name"], bars=bars, lines=lines, summary=summary, plot=plot)
