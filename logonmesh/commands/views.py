"""``logonmesh peers``, ``status`` and ``cache``: one daemon's view, printed once.

Each asks one daemon over its ipc socket and prints what it said.  ``peers``
also reads the clusters table, because the registry and the daemon answer
different questions: the table says who announced itself and when it last
wrote its heartbeat there; the daemon says whom it actually hears on the bus.
A partition shows up as a node that is fresh in the table and down to the
daemon, which is why the table alone is never trusted for "up".
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from logonmesh.commands.common import (
    WIDTH, ago, call, clip, emit_json, inspect_options, node_option, out, pick_node, registry_rows,
    pairs, split_settings, table, version_text,
)


# ---- peers ------------------------------------------------------------------------

@click.command()
@node_option()
@inspect_options
def peers(**values: Any) -> None:
    """Every node in the clusters table, and how a daemon sees it.

    Exit 1 when a known node is down: one with a row in the table, or one the
    daemon remembers as a lost peer.  A node that left cleanly (it said goodbye
    as it stopped) is "left", which is no failure.  A peer whose clock is off by more than
    the maximum is flagged, but is not "down": the exit code stays 0 for it.
    """
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    rows = registry_rows(settings)
    view = call(settings, name, "peers")
    max_offset_ms = view.get("max_clock_offset_ms")
    merged = merge_peers(name, rows, view["peers"], max_offset_ms)
    healthy = all(p["up"] or p["state"] == "left" for p in merged)
    if args["as_json"]:
        emit_json({"node": name, "digest": view["digest"], "healthy": healthy,
                   "max_clock_offset_ms": max_offset_ms, "peers": merged})
    else:
        print_peers(name, how, view["digest"], merged, max_offset_ms)
    raise SystemExit(0 if healthy else 1)


def _endpoints(row: Any, peer: dict | None) -> tuple[str, str]:
    """Where a node listens: as its registry row says, else as the daemon heard it (a name comes from one)."""
    if row:
        return row.bus_endpoint, row.peer_endpoint
    assert peer is not None
    return peer["bus"], peer["peer"]


def merge_peers(me: str, rows: list, seen: list[dict], max_offset_ms: float | None = None) -> list[dict]:
    """One record per known node: its row (if any) joined with the daemon's view (if any)."""
    by_row = {r.id: r for r in rows}
    by_view = {p["name"]: p for p in seen}
    now = time.time()
    merged = []
    for name in sorted(by_row.keys() | by_view.keys()):
        row, peer = by_row.get(name), by_view.get(name)
        bus, peer_endpoint = _endpoints(row, peer)
        record: dict[str, Any] = {
            "name": name, "self": name == me, "in_registry": row is not None,
            "bus": bus, "peer": peer_endpoint,
            "heartbeat_age_s": round(now - row.heartbeat_at, 3) if row else None,
            "host": row.host if row else None, "pid": row.pid if row else None,
        }
        if name == me:
            record.update(up=True, state="self", last_seq=None, digest_match=None, heard_ms_ago=None, reason="")
        elif peer is None:
            record.update(up=False, state="unseen", last_seq=None, digest_match=None, heard_ms_ago=None,
                          reason="in the table, never heard on the bus")
        else:
            state = peer.get("state") or ("up" if peer["up"] else "down")  # a daemon before "left" says no state
            record.update(up=peer["up"], state=state, last_seq=peer["last_seq"],
                          digest_match=peer["digest_match"], heard_ms_ago=peer["heard_ms_ago"],
                          reason=peer["reason"] if not peer["up"] else "")
        record.update(clock_fields(None if name == me else peer, max_offset_ms))
        merged.append(record)
    return merged


def clock_fields(peer: dict | None, max_offset_ms: float | None) -> dict[str, Any]:
    """The daemon's estimate of a peer's clock (its clock minus this node's); None where not measured.

    ``clock_skewed`` is the daemon's verdict; a daemon that reports an offset
    without one is judged here against its maximum.
    """
    offset = peer.get("clock_offset_ms") if peer else None
    skewed = peer.get("clock_skewed") if peer else None
    if skewed is None:
        skewed = offset is not None and max_offset_ms is not None and abs(offset) > max_offset_ms
    return {"clock_offset_ms": offset, "clock_rtt_ms": peer.get("clock_rtt_ms") if peer else None,
            "clock_skewed": bool(skewed)}


def offset_text(ms: float | None, skewed: bool = False) -> str:
    """A clock offset, signed and short: +0.3ms, -12ms, +1.5s, +300.0s; ? when not measured; ! when skewed."""
    if ms is None:
        return "?"
    size = _magnitude(ms)
    return ("-" if ms < 0 and size != "0.0ms" else "+") + size + ("!" if skewed else "")


def _magnitude(ms: float) -> str:
    size = abs(ms)
    if size < 9.95:
        return f"{size:.1f}ms"
    if size < 999.5:
        return f"{size:.0f}ms"
    if size < 3_600_000:
        return f"{size / 1000:.1f}s"
    return f"{size / 3_600_000:.1f}h"


def skew_note(me: str, peer: str, offset_ms: float, max_offset_ms: float | None) -> str:
    """One line for a peer beyond the maximum clock offset: how far, which way, and the maximum."""
    way = "behind" if offset_ms < 0 else "ahead of"
    limit = f"the {max_offset_ms:.0f}ms maximum" if max_offset_ms is not None else "--max-clock-offset-ms"
    return f"{peer}'s clock is {_magnitude(offset_ms)} {way} {me}'s, beyond {limit}"


def print_peers(name: str, how: str, digest: str, merged: list[dict], max_offset_ms: float | None = None) -> None:
    """The table, a line per node that is down or whose clock is too far off, then the totals.

    A PEER endpoint on the BUS's host shows only its port, so that the OFFSET
    column still fits in 80 columns.
    """
    out(f"as seen by node {name} ({how})")
    rows = [[p["name"], p["state"], ago(p["heard_ms_ago"] / 1000) if p["heard_ms_ago"] is not None else None,
             ago(p["heartbeat_age_s"]), p["last_seq"], _digest_cell(p),
             None if p["self"] else offset_text(p["clock_offset_ms"], p["clock_skewed"]),
             _hostport(p["bus"]), _peer_cell(p["bus"], p["peer"])]
            for p in merged]
    out(table(["NODE", "STATE", "HEARD", "BEAT", "SEQ", "DIGEST", "OFFSET", "BUS", "PEER"], rows))
    for p in merged:
        if p["state"] == "left":
            out(clip(f"{p['name']} left the cluster{'' if p['in_registry'] else ' (no longer in the table)'}", WIDTH))
        elif not p["up"]:
            out(clip(f"{p['name']} is down: {p['reason'] or 'no reason given'}"
                     f"{'' if p['in_registry'] else ' (no longer in the table)'}", WIDTH))
    for p in merged:
        if p["clock_skewed"] and p["clock_offset_ms"] is not None:
            out(clip(f"! {skew_note(name, p['name'], p['clock_offset_ms'], max_offset_ms)}", WIDTH))
    left = sum(p["state"] == "left" for p in merged)
    down = sum(not p["up"] for p in merged) - left
    out(f"{len(merged)} nodes, {down} down{f', {left} left' if left else ''}; digest {digest[:12]}")


def _digest_cell(p: dict) -> str | None:
    if p["digest_match"] is None:
        return None
    return "same" if p["digest_match"] else "differs"


def _hostport(endpoint: str | None) -> str | None:
    return endpoint.split("://", 1)[-1] if endpoint else None


def _peer_cell(bus: str | None, peer: str | None) -> str | None:
    """The peer endpoint, as ':port' when it is on the bus endpoint's host."""
    bus_at, peer_at = _hostport(bus), _hostport(peer)
    if bus_at and peer_at and bus_at.rpartition(":")[0] == peer_at.rpartition(":")[0]:
        return ":" + peer_at.rpartition(":")[2]
    return peer_at


# ---- status -------------------------------------------------------------------------

@click.command()
@node_option()
@inspect_options
def status(**values: Any) -> None:
    """One daemon's own view: uptime, cache, traffic, drops, repairs, faults."""
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    st = call(settings, name, "status")
    if args["as_json"]:
        emit_json(st)
    else:
        print_status(st, how)


def print_status(st: dict, how: str) -> None:
    stats: dict[str, int] = st["stats"]
    cache = st["cache"]
    out(f"node {st['node']} ({how})")
    out(pairs([
        ["uptime", ago(st["uptime_s"])], ["incarnation", st["incarnation"]], ["pid", st.get("pid")],
        ["bus", st["bus"]], ["peer", st["peer"]],
        ["peers up", ", ".join(st["peers_up"]) or "none"],
        ["cache", f"{cache['users']} users, {cache['sessions']} sessions, {cache['tombstones']} tombstones"
                  + (f", {cache['failure_counts']} failure counts" if "failure_counts" in cache else "")
                  + (f", {cache['records']} records" if cache.get("records") else "")],
        ["digest", st["digest"][:16]],
        ["partition", "blocks " + ", ".join(st["blocked"]) if st["blocked"] else "none"],
        ["loss", f"{st['loss']:.0%} of incoming bus messages dropped" if st["loss"] else "none"],
        ["monitor", _monitor_text(st.get("monitor"))],
    ]))
    out()
    out(_messages_table(stats))
    out()
    out(_drops_line(stats))
    out(_repairs_line(stats))


def _monitor_text(mon: dict | None) -> str:
    if not mon:
        return "none"
    return f"{mon['listeners']} listening ({mon['endpoint'].split('/')[-1]})"


def _messages_table(stats: dict[str, int]) -> str:
    types = sorted({k[3:] for k in stats if k.startswith("in_")} | {k[4:] for k in stats if k.startswith("out_")})
    rows = [[t, stats.get(f"in_{t}", 0), stats.get(f"out_{t}", 0)] for t in types]
    return table(["MESSAGES", "IN", "OUT"], rows or [["none yet", 0, 0]])


def _drops_line(stats: dict[str, int]) -> str:
    drops = {k[5:]: v for k, v in stats.items() if k.startswith("drop_") and v}
    drops.setdefault("bad_signature", 0)
    gaps = stats.get("seq_gaps", 0)
    text = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
    return clip(f"drops: {text}; sequence gaps {gaps}", WIDTH)


def _repairs_line(stats: dict[str, int]) -> str:
    """Whatever repair counters the daemon keeps (they grow with the repair protocol), then entries and bytes."""
    counts = {k[len("repairs_"):]: v for k, v in stats.items()
              if k.startswith("repairs_") and not k.startswith("repairs_for_")}
    counts.setdefault("started", 0)
    counts.setdefault("done", 0)
    text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: kv[0] != "started"))
    moved = (f"entries {stats.get('repair_entries_in', 0)} in / {stats.get('repair_entries_out', 0)} out, "
             f"bytes {stats.get('repair_bytes_in', 0)} in / {stats.get('repair_bytes_out', 0)} out")
    return f"repairs: {text}\n         {moved}"


# ---- cache ----------------------------------------------------------------------------

@click.command()
@node_option()
@click.option("--user", metavar="NAME", help="only this user's entries (with --sessions: only this user's sessions)")
@click.option("--sessions", is_flag=True, help="sessions instead of the other kinds")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True, help="at most this many")
@inspect_options
def cache(**values: Any) -> None:
    """Entries of one daemon's cache, with their versions: a section per kind (users, login failures,
    records), or the sessions with --sessions.

    Never a password hash, and only the first characters of a session token.
    """
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    answer = call(settings, name, "cache", user=args["user"], sessions=args["sessions"], limit=args["limit"])
    entries = answer["entries"]
    if args["as_json"]:
        emit_json({"node": name, "sessions": args["sessions"], "entries": entries})
        return
    what = "sessions" if args["sessions"] else "entries"
    out(f"{what} in the cache of node {name} ({how})")
    if args["sessions"]:
        out(_sessions_table(entries))
    else:
        out(_sections(entries))
    more = " (the --limit; there may be more)" if len(entries) >= args["limit"] else ""
    out(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}{more}")


def _sections(entries: list[dict]) -> str:
    """One table per kind that has entries, in the registry's order; an empty users table when none has."""
    from logonmesh.daemon.kinds import KINDS
    by_kind: dict[str, list[dict]] = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    if not by_kind:
        by_kind["u"] = []
    order = [k for k in KINDS if k in by_kind] + sorted(k for k in by_kind if k not in KINDS)
    return "\n\n".join(SECTIONS.get(k, _other_table)(by_kind[k]) for k in order)


def _users_table(entries: list[dict]) -> str:
    rows = [[e["key"], (e["id"] or "")[:8] or "deleted", version_text(e["hlc"]), e["origin"][:8]] for e in entries]
    return table(["USER", "ID", "VERSION", "ORIGIN"], rows)


def _sessions_table(entries: list[dict]) -> str:
    now_ms = time.time() * 1000
    rows = [[e["key"], e["user"] or "(revoked)", version_text(e["hlc"]), e["origin"][:12],
             "in " + ago((e["expires"] - now_ms) / 1000) if e["expires"] else "never"] for e in entries]
    return table(["TOKEN", "USER", "VERSION", "ORIGIN", "EXPIRES"], rows)


def _failures_table(entries: list[dict]) -> str:
    """Login-failure counts: one key per subject and counting node, so the cluster's count is their sum."""
    now_ms = time.time() * 1000
    rows = [[e["key"], e["failures"] if e["failures"] is not None else "reset", version_text(e["hlc"]),
             "in " + ago((e["expires"] - now_ms) / 1000) if e["expires"] else "never"] for e in entries]
    return table(["LOGIN FAILURES", "COUNT", "VERSION", "EXPIRES"], rows)


def _records_table(entries: list[dict]) -> str:
    """App records, "<namespace>/<key>" in key order, with their value as JSON clipped to fit 80 columns."""
    rows = [[clip(e["key"], 24), "(deleted)" if e["tombstone"] else clip(_value_text(e.get("value")), 17),
             version_text(e["hlc"]), e["origin"][:8]] for e in sorted(entries, key=lambda e: e["key"])]
    return table(["RECORD", "VALUE", "VERSION", "ORIGIN"], rows)


def _value_text(value: Any) -> str:
    return json.dumps(value, default=repr, separators=(",", ":"), ensure_ascii=False)


def _other_table(entries: list[dict]) -> str:
    """A kind this CLI does not know (a newer daemon): still shown, with what every entry has."""
    heading = str(entries[0].get("name") or f"kind {entries[0]['kind']}").upper()
    rows = [[e["key"], version_text(e["hlc"]), e["origin"][:8]] for e in entries]
    return table([heading, "VERSION", "ORIGIN"], rows)


SECTIONS = {"u": _users_table, "t": _failures_table, "r": _records_table}
