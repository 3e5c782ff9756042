"""``logonmesh ping NAME``: round trips to a node over its peer socket, reported like ping(8).

This measures the path the daemons use for repair, not the ipc socket: a
DEALER to the node's ``peer_endpoint`` (from the clusters table) sends signed
``ping`` envelopes and waits for ``pong``.  Sends are NOBLOCK and each ping
has its own timeout, so a dead or wrong endpoint costs --timeout per ping,
never a hang; a late pong is recognised by its number and not counted twice.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import click
import zmq

from logonmesh.daemon import wire
from logonmesh.commands.common import (
    TABLE_HINT, Unreachable, ask, cookie, emit_json, inspect_options, note, out, registry_rows, running_daemons,
    secure, split_settings, unknown_node,
)


@click.command()
@click.argument("node_name", metavar="NAME")  # not "name": that is the --name setting
@click.option("--count", type=click.IntRange(min=1), default=4, show_default=True, help="pings to send")
@click.option("--interval", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="seconds between pings")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="seconds to wait for each pong")
@inspect_options
def ping(**values: Any) -> None:
    """Round trips to node NAME over its peer socket; exit 1 when none comes back."""
    settings, args = split_settings(values)
    name = args["node_name"]
    rows = registry_rows(settings)
    row = next((r for r in rows if r.id == name), None)
    if row is None:
        unknown_node([name], [r.id for r in rows], TABLE_HINT)
    secret = cookie(settings)
    pinger = Pinger(row.peer_endpoint, secret, args["timeout"], lambda sock: secure(settings, secret, sock))
    if not args["as_json"]:
        out(f"PING {name} at {row.peer_endpoint}")
    rtts = pinger.run(args["count"], args["interval"], None if args["as_json"] else _printer(name))
    report(name, row.peer_endpoint, args["count"], rtts, args["as_json"])
    if not any(r is not None for r in rtts):
        note(f"logonmesh: {why_no_pong(settings, name)}")
    raise SystemExit(0 if any(r is not None for r in rtts) else 1)


def why_no_pong(settings: Any, name: str) -> str:
    """A peer drops a ping it cannot verify without a word, so ask the node's ipc socket, when it is here, why."""
    if name not in running_daemons(settings):
        return (f"no pong from {name}: its daemon is down, or unreachable from here, "
                "or its cookie differs (it runs elsewhere, so this cannot be told apart here)")
    try:
        ask(settings, name, "status")
    except Unreachable as exc:
        if exc.code == "wrong_cookie":
            return f"no pong from {name}: wrong cookie (its daemon answers on ipc, but not with our cookie)"
        return f"no pong from {name}: {exc}"
    return f"no pong from {name}: its daemon answers on ipc, so the peer socket is cut off (a partition?)"


def _printer(name: str):
    def show(n: int, rtt_ms: float | None, why: str) -> None:
        out(f"pong from {name}: n={n} time={rtt_ms:.3f} ms" if rtt_ms is not None else f"no pong for n={n} ({why})")
    return show


class Pinger:
    def __init__(self, endpoint: str, cookie_: bytes, timeout_s: float,
                 prepare: Callable[[zmq.Socket], None] = lambda sock: None) -> None:
        self.endpoint = endpoint
        self.prepare = prepare  # CURVE, when the cluster uses it
        self.timeout_s = timeout_s
        self.codec = wire.Codec(cookie_, "cli")

    def run(self, count: int, interval: float, show) -> list[float | None]:
        """RTT in ms per ping, None for a lost one; Ctrl-C ends early with what was measured."""
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.sndhwm = 10
        self.prepare(dealer)
        dealer.connect(self.endpoint)
        rtts: list[float | None] = []
        try:
            for n in range(1, count + 1):
                started = time.monotonic()
                rtt, why = self._one(dealer, n)
                rtts.append(rtt)
                if show:
                    show(n, rtt, why)
                if n < count:
                    time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            pass
        finally:
            dealer.close(linger=0)
            ctx.term()
        return rtts

    def _one(self, dealer: zmq.Socket, n: int) -> tuple[float | None, str]:
        sent = time.monotonic()
        try:
            dealer.send(self.codec.encode("ping", {"n": n, "t": time.time()}), zmq.NOBLOCK)
        except zmq.Again:
            return None, "the peer socket is not accepting messages"
        deadline = sent + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not dealer.poll(int(left * 1000) + 1):
                break
            try:
                env = self.codec.decode(dealer.recv(zmq.NOBLOCK))
            except (zmq.Again, wire.WireError):
                continue
            if env.type == "pong" and env.payload["n"] == n:
                return (time.monotonic() - sent) * 1000, ""
        return None, f"timeout after {self.timeout_s:g} s"


def report(name: str, endpoint: str, count: int, rtts: list[float | None], as_json: bool) -> None:
    got = [r for r in rtts if r is not None]
    sent = len(rtts)
    loss = 100.0 * (sent - len(got)) / sent if sent else 100.0
    stats = {"min_ms": min(got), "avg_ms": sum(got) / len(got), "max_ms": max(got)} if got else {}
    if as_json:
        emit_json({"node": name, "endpoint": endpoint, "sent": sent, "received": len(got),
                   "loss_percent": round(loss, 1), "rtt_ms": [None if r is None else round(r, 3) for r in rtts],
                   **{k: round(v, 3) for k, v in stats.items()}})
        return
    out(f"--- {name} ping statistics ---")
    out(f"{sent} sent, {len(got)} received, {loss:.0f}% loss")
    if got:
        out(f"rtt min/avg/max = {stats['min_ms']:.3f}/{stats['avg_ms']:.3f}/{stats['max_ms']:.3f} ms")
