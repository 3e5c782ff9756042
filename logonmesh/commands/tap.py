"""``logonmesh tap``: watch the bus like a peer does, message by message.

The tap is one SUB socket connected to the bus PUB of each chosen node (their
endpoints come from the clusters table).  Every frame is verified with the
cookie, exactly as a daemon would; one that fails is shown as a reject with
its reason, never silently skipped.  Frames are printed redacted: the wire
carries password hashes and whole session tokens, the terminal gets neither.

PUB/SUB has a slow joiner: a subscriber misses what was published before its
subscription reached the publisher.  So the tap says "listening" (on stderr)
only once it has proof that each node's PUB knows about it: a frame from that
node, or a finished ZMTP handshake with it plus a short grace for the
subscription to land.  Whatever a caller does after that line is seen.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import click
import msgpack
import zmq

from logonmesh.daemon import wire
from logonmesh.commands.common import (
    TABLE_HINT, WIDTH, Stop, clip, clock, cookie, emit_json, fail, inspect_options, node_option, note, out,
    registry_rows, secure, split_settings, unknown_node,
)
from logonmesh.daemon.kinds import KINDS, Entry

LISTEN_WAIT_S = 3.0        # give up proving the subscriptions after this, and say so
HANDSHAKE_GRACE_S = 0.05   # after a handshake, time for the subscription to reach the PUB
POLL_MS = 200              # so Ctrl-C is noticed promptly
TYPE_NAMES = {"hb": "heartbeat"}  # the wire's short names, spelled out for people
TYPE_CHOICES = ["heartbeat", "hb", "merge", "reject"]
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@click.command()
@node_option(multiple=True)
@click.option("--type", "types", type=click.Choice(TYPE_CHOICES), multiple=True,
              help="only messages of this type (repeat the option); 'reject' for frames that fail verification")
@click.option("--count", type=click.IntRange(min=1), default=None, help="stop after N messages")
@inspect_options
def tap(**values: Any) -> None:
    """Print each message on the bus as it passes: time, sender, sequence, type, summary.

    Signatures are verified with the cookie; a frame that fails is shown as
    REJECT with the reason.  Ctrl-C stops it (exit 0).
    """
    settings, args = split_settings(values)
    secret = cookie(settings)
    targets = choose(registry_rows(settings), args["node"])
    wanted = {TYPE_NAMES.get(t, t) for t in args["types"]}
    tap_ = Tap(targets, wire.wire_key(secret), wanted, Stop(args["count"]), args["as_json"])
    tap_.run(lambda sock: secure(settings, secret, sock))


def choose(rows: list, names: tuple[str, ...]) -> dict[str, str]:
    """name -> bus endpoint of the nodes to tap; unknown names are a usage error."""
    by_name = {r.id: r.bus_endpoint for r in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        unknown_node(unknown, by_name, TABLE_HINT)
    if not by_name:
        fail("the clusters table is empty: there is no bus to tap")
    return {n: by_name[n] for n in (names or sorted(by_name))}


class Tap:
    def __init__(self, targets: dict[str, str], key: bytes, wanted: set[str], stop: Stop, as_json: bool) -> None:
        self.targets = targets
        self.key = key
        self.wanted = wanted
        self.stop = stop
        self.as_json = as_json
        self.heard: set[str] = set()
        self.shaken: dict[str, float] = {}   # endpoint -> monotonic time of its handshake

    def run(self, prepare: Callable[[zmq.Socket], None]) -> None:
        """Subscribe (``prepare`` sets CURVE up if the cluster uses it), say when listening, stream."""
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 100_000
        prepare(sub)
        sub.subscribe(b"")
        mon = sub.get_monitor_socket(HANDSHAKE_EVENTS)
        mon.linger = 0
        try:
            for endpoint in self.targets.values():
                sub.connect(endpoint)
            if self._until_listening(sub, mon):
                self._stream(sub)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a tap is meant to end: exit 0
        finally:
            if not mon.closed:
                sub.disable_monitor()
                mon.close(linger=0)
            sub.close(linger=0)
            ctx.term()

    def _until_listening(self, sub: zmq.Socket, mon: zmq.Socket) -> bool:
        """Print what arrives meanwhile; return False when --count was reached before."""
        from zmq.utils.monitor import recv_monitor_message
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        deadline = time.monotonic() + LISTEN_WAIT_S
        while (pending := self._pending()) and time.monotonic() < deadline:
            for sock, _ in poller.poll(50):
                if sock is mon:
                    self._on_handshake(recv_monitor_message(mon))
                elif self._receive(sub):
                    return False
        sub.disable_monitor()
        mon.close(linger=0)
        names = ", ".join(self.targets)
        if pending:
            note(f"tap: listening to {names}; no connection yet to {', '.join(pending)} (still trying)")
        else:
            note(f"tap: listening to {names}")
        return True

    def _on_handshake(self, event: dict) -> None:
        endpoint = event["endpoint"].decode()
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.shaken.setdefault(endpoint, time.monotonic())
            return
        name = next((n for n, e in self.targets.items() if e == endpoint), endpoint)
        fail(f"the handshake with node {name} ({endpoint}) failed ({zmq.Event(event['event']).name}); "
             "do the daemons run with --curve / LOGONMESH_CURVE, and this command too?")

    def _pending(self) -> list[str]:
        now = time.monotonic()
        return [name for name, endpoint in self.targets.items()
                if name not in self.heard and now - self.shaken.get(endpoint, now) < HANDSHAKE_GRACE_S]

    def _stream(self, sub: zmq.Socket) -> None:
        while True:
            if sub.poll(POLL_MS) and self._receive(sub):
                return

    def _receive(self, sub: zmq.Socket) -> bool:
        """Handle every waiting frame; True once --count is reached."""
        while True:
            try:
                frame = sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            record = self._record(frame)
            if self.wanted and record["type"] not in self.wanted:
                continue
            self._print(record)
            if self.stop.one():
                return True

    def _record(self, frame: bytes) -> dict:
        """What one frame says, redacted; a frame that fails verification becomes a reject."""
        now = time.time()
        try:
            env = wire.decode(self.key, frame)
        except wire.WireError as exc:
            return {"t": now, "type": "reject", "reason": exc.reason, "claimed_sender": _claimed_sender(frame),
                    "bytes": len(frame)}
        self.heard.add(env.sender)
        return {"t": now, "sender": env.sender, "incarnation": env.incarnation, "seq": env.seq,
                "type": TYPE_NAMES.get(env.type, env.type), "bytes": len(frame),
                "summary": summary(env.type, env.payload), "payload": redacted(env.type, env.payload)}

    def _print(self, r: dict) -> None:
        if self.as_json:
            emit_json(r)
        elif r["type"] == "reject":
            sender = f"{r['claimed_sender']}?" if r["claimed_sender"] else "?"
            out(clip(f"{clock(r['t'])}  {sender:<8} {'-':>7}  REJECT {r['reason']} ({r['bytes']} bytes)", WIDTH))
        else:
            out(clip(f"{clock(r['t'])}  {r['sender']:<8} {r['seq']:>7}  {r['type']:<9}  {r['summary']}", WIDTH))


def summary(type_: str, payload: dict) -> str:
    """A few words on a message, for the human table."""
    if type_ == "hb":
        return f"size {payload['size']}, digest {payload['digest'].hex()[:8]}"
    if type_ == "merge":
        entries = payload["entries"]
        described = ", ".join(_entry_text(e) for e in entries[:3])
        more = f", +{len(entries) - 3} more" if len(entries) > 3 else ""
        return f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}: {described}{more}"
    return ", ".join(f"{k}={v}" for k, v in payload.items() if isinstance(v, (int, float, str)))[:60]


def _entry_text(entry: Entry) -> str:
    """The kind's own few words (``daemon.kinds``): never a hash, never a whole token."""
    return KINDS[entry.kind].describe(entry)


def redacted(type_: str, payload: dict) -> dict:
    """The payload for --json: entries without password hashes or whole tokens, bytes as hex."""
    if "entries" not in payload:
        return {k: v.hex() if isinstance(v, bytes) else v for k, v in payload.items()}
    return {**payload, "entries": [KINDS[e.kind].redacted(e) for e in payload["entries"]]}


def _claimed_sender(frame: bytes) -> str | None:
    """Who an unverified frame says it is from, for the reject line; never trusted for anything else."""
    try:
        fields = msgpack.unpackb(frame[:-wire.MAC_SIZE], raw=False)
        sender = fields[2]
        return sender if isinstance(sender, str) and len(sender) <= 32 else None
    except Exception:
        return None
