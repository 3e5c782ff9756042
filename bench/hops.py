"""Baselines for merge propagation: one bare one-way hop, publisher and subscribers in separate processes.

Each message carries the publisher's ``time.monotonic_ns()`` taken just before
it is sent; a subscriber subtracts it from its own ``monotonic_ns()`` right
after the receive.  CLOCK_MONOTONIC is one clock for every process of the
host, so the difference is the one-way latency.  Messages are padded to the
size of a real one-user merge frame and sent at the same paced rate as the
daemon benchmark, so the two are measured alike.

    python -m bench.hops zmq|redis --n 5000 --size 330 --rate 500 [--subscribers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

HEAD = struct.Struct("<Bq")   # kind, monotonic ns at send
WARM, DATA, END = 0, 1, 2
REDIS_URL = "redis://127.0.0.1:6379/0"


def _message(kind: int, size: int) -> bytes:
    return HEAD.pack(kind, time.monotonic_ns()) + b"x" * max(0, size - HEAD.size)


def pace(n: int, rate: float):
    """Yield i = 0..n-1, each at its slot start + i / rate (a steady rate, not as fast as possible)."""
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


# ---- subscribers (run as their own processes) ------------------------------------------------

def _sub_zmq(endpoint: str, out: str) -> None:
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = 0
    sock.subscribe(b"")
    sock.connect(endpoint)
    _collect(sock.recv, out)
    sock.close()
    ctx.term()


def _sub_redis(channel: str, out: str) -> None:
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe(channel)

    def recv() -> bytes:
        while True:
            m = p.get_message(timeout=10)
            if m is not None:
                return m["data"]
    _collect(recv, out)
    p.close()


def _collect(recv, out: str) -> None:
    samples: list[int] = []
    ready = False
    while True:
        frame = recv()
        now = time.monotonic_ns()
        kind, sent = HEAD.unpack_from(frame)
        if kind == DATA:
            samples.append(now - sent)
        elif kind == END:
            break
        elif not ready:
            ready = True
            print("ready", flush=True)
    with open(out, "w") as f:
        json.dump(samples, f)


# ---- the publisher side (in the calling process) ---------------------------------------------

def hop(kind: str, n: int, size: int, rate: float, subscribers: int = 1, progress=None,
        new_session: bool = True) -> list[float]:
    """One-way latencies in µs of n paced messages, pooled over every subscriber.

    Subscribers start in a session of their own, as the harness starts daemons
    (with autogroup scheduling, a session is a scheduling group of its own).
    """
    if kind == "zmq":
        import zmq
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.sndhwm = 0
        pub.bind("tcp://127.0.0.1:0")
        target = pub.last_endpoint.decode()
        send = pub.send
    elif kind == "redis":
        import redis
        r = redis.Redis.from_url(REDIS_URL)
        target = f"bench-hop-{os.getpid()}-{time.monotonic_ns()}"
        send = lambda frame: r.publish(target, frame)  # noqa: E731
    else:
        raise ValueError(kind)
    tmp = tempfile.mkdtemp(prefix="lm-hop-")
    outs = [os.path.join(tmp, f"sub{i}.json") for i in range(subscribers)]
    procs = [subprocess.Popen([sys.executable, "-m", "bench.hops", "_sub", kind, target, out],
                              stdout=subprocess.PIPE, text=True, start_new_session=new_session)
             for out in outs]
    try:
        _warm_up(send, procs, size)
        for i in pace(n, rate):
            send(_message(DATA, size))
            if progress is not None and i % 100 == 99:
                progress(100)
        for _ in range(20):  # PUB/SUB may drop; the subscribers stop at the first END they see
            send(_message(END, size))
            time.sleep(0.005)
        samples: list[float] = []
        for proc, out in zip(procs, outs):
            proc.wait(60)
            with open(out) as f:
                samples += [ns / 1000 for ns in json.load(f)]
        return samples
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out in outs:
            if os.path.exists(out):
                os.unlink(out)
        os.rmdir(tmp)
        if kind == "zmq":
            pub.close()
            ctx.term()


def _warm_up(send, procs, size: int, timeout: float = 20.0) -> None:
    """Send warm-up messages until every subscriber has said it receives (the slow joiner)."""
    import selectors
    sel = selectors.DefaultSelector()
    for proc in procs:
        sel.register(proc.stdout, selectors.EVENT_READ, proc)
    pending = set(procs)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError("a baseline subscriber never received")
        send(_message(WARM, size))
        for key, _ in sel.select(0.01):
            if key.fileobj.readline().strip() == "ready":
                pending.discard(key.data)
                sel.unregister(key.fileobj)
    for _ in range(20):  # let every subscriber's queue drain
        send(_message(WARM, size))
        time.sleep(0.005)
    sel.close()


def redis_reachable() -> str | None:
    """None if Redis answers at 127.0.0.1:6379, else why not."""
    try:
        import redis
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:  # ImportError or any connection error
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sub":
        kind, target, out = sys.argv[2:5]
        (_sub_zmq if kind == "zmq" else _sub_redis)(target, out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["zmq", "redis"])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=330)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--subscribers", type=int, default=1)
    args = ap.parse_args()
    from bench.common import pct
    samples = hop(args.kind, args.n, args.size, args.rate, args.subscribers)
    print(f"{args.kind}: {len(samples)} samples, p50 {pct(samples, 50):.0f} µs, p90 {pct(samples, 90):.0f} µs, "
          f"p99 {pct(samples, 99):.0f} µs")


if __name__ == "__main__":
    main()
