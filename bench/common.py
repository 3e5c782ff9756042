"""Helpers shared by the benchmarks: seeded databases, a peer-socket probe, statistics."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import zmq

from logonmesh.daemon import wire

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FAKE_HASH = "scrypt:32768:8:1$" + "s" * 16 + "$" + "h" * 128  # the length of a real werkzeug hash


def seed_users(path: str, n: int, prefix: str = "user") -> None:
    """Write n users straight into a fresh cluster database, as a pre-built database would be."""
    from logonmesh.discovery.sqlite import open_db
    open_db(path).conn.close()
    conn = sqlite3.connect(path)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = ((uuid.uuid4().hex, f"{prefix}{i:07d}", FAKE_HASH,
             (start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")) for i in range(n))
    with conn:
        conn.executemany("insert into users (id, username, password_hash, created_at) values (?,?,?,?)", rows)
    conn.close()


def snapshot(peer_endpoint: str, cookie: bytes, timeout_s: float = 120) -> tuple[int, float]:
    """Ask a daemon for a full snapshot over its peer socket, as a peer would; (bytes, seconds)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(peer_endpoint)
    codec = wire.Codec(cookie, "bench")
    try:
        t0 = time.perf_counter()
        sock.send(codec.encode("sync_req", {"digest": b""}))
        if not sock.poll(timeout_s * 1000):
            raise TimeoutError("no snapshot reply")
        frame = sock.recv()
        return len(frame), time.perf_counter() - t0
    finally:
        sock.close()


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, " \
           f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"
