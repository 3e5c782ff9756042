"""``logonmesh monitor``: a daemon's live zmq socket events (connected, disconnected, retries...).

The daemon publishes them on its monitor feed (``daemon.monitor``), an ipc
XPUB beside its control socket.  Its monitors run only while somebody
subscribes, and it greets each subscriber with a HELLO event: that greeting is
what makes this command print "listening", since from then on nothing is
missed.  Frames are verified with the cookie like everything else.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
import zmq

from logonmesh.daemon import wire
from logonmesh.commands.common import (
    WIDTH, Stop, clip, clock, cookie, emit_json, fail, inspect_options, node_option, note, out, pick_node, shown,
    split_settings,
)
from logonmesh.daemon.monitor import HELLO, monitor_path

HELLO_WAIT_S = 3.0
POLL_MS = 200


@click.command()
@node_option()
@click.option("--count", type=click.IntRange(min=1), default=None, help="stop after N events")
@inspect_options
def monitor(**values: Any) -> None:
    """Live socket events of one daemon's bus and peer sockets. Ctrl-C stops it (exit 0)."""
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    path = monitor_path(settings.run_dir, name)
    if not os.path.exists(path):
        fail(f"node {name} has no monitor feed (no socket at {shown(path)}); is its daemon older than this tool?")
    key = wire.wire_key(cookie(settings))
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(f"ipc://{path}")
    try:
        wait_hello(sub, key, name)
        note(f"monitor: listening to the sockets of node {name} ({how})")
        alive = stream(sub, key, Stop(args["count"]), args["as_json"], path)
    except KeyboardInterrupt:
        alive = True  # Ctrl-C is how a monitor is meant to end: exit 0
    finally:
        sub.close(linger=0)
        ctx.term()
    if not alive:
        fail(f"the daemon of node {name} stopped (its monitor socket {shown(path)} is gone)")


def wait_hello(sub: zmq.Socket, key: bytes, name: str) -> None:
    """Until the daemon greets us: its monitors then run and we are subscribed."""
    deadline = time.monotonic() + HELLO_WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000) + 1):
            break
        try:
            env = wire.decode(key, sub.recv())
        except wire.WireError as exc:
            if exc.reason == "bad_signature":
                fail(f"wrong cookie: the monitor feed of node {name} answered, but not with our cookie")
            fail(f"the monitor feed of node {name} sent a frame that fails verification ({exc.reason})")
        if env.type == "mon" and env.payload["event"] == HELLO:
            return
    fail(f"the monitor feed of node {name} did not answer within {HELLO_WAIT_S:g} s")


def stream(sub: zmq.Socket, key: bytes, stop: Stop, as_json: bool, path: str) -> bool:
    """Print events until --count; False when the daemon went away (its socket file is removed on shutdown)."""
    while True:
        if not sub.poll(POLL_MS):
            if not os.path.exists(path):
                return False
            continue
        try:
            env = wire.decode(key, sub.recv())
        except wire.WireError as exc:
            show({"t": time.time(), "socket": "?", "event": "REJECT", "endpoint": "", "value": 0,
                  "reason": exc.reason}, as_json)
            continue
        if env.type != "mon" or env.payload["event"] == HELLO:
            continue  # another subscriber's greeting
        show({**env.payload, "node": env.sender}, as_json)
        if stop.one():
            return True


def show(event: dict, as_json: bool) -> None:
    if as_json:
        emit_json(event)
        return
    detail = _detail(event)
    endpoint = (event["endpoint"] or "-").removeprefix("tcp://")
    out(clip(f"{clock(event['t'])}  {event['socket']:<11}  {event['event']:<19}  {endpoint}"
             f"{'  ' + detail if detail else ''}", WIDTH))


def _detail(event: dict) -> str:
    """What libzmq's value means for this event: an errno, a retry interval, a file descriptor."""
    name, value = event["event"], event["value"]
    if event.get("reason"):
        return event["reason"]
    if "FAILED" in name and value:
        return os.strerror(value)
    if name == "CONNECT_RETRIED":
        return f"retry in {value}ms"
    return ""
