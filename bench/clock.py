"""The figures of issue 14's closing note: peer clock offsets, the throttle window on each node, convergence.

    python -m bench.clock

Three nodes, one of them (s1) 300 s ahead, then 300 s behind (libfaketime, as the harness does it).  Not a
figure of ``python -m bench``: there is no baseline to set it beside; what it shows is that every node agrees.
"""

from __future__ import annotations

import time
import uuid

import requests

from logonmesh.testing import Browser, LocalCluster, Node, eventually

PASSWORD = "correct horse battery"
LIMIT, WINDOW_S = 3, 6


def _status(resp: requests.Response, status: int) -> None:
    assert resp.status_code == status, resp.status_code


def _user(node: Node) -> str:
    name = f"u{uuid.uuid4().hex[:8]}"
    eventually(lambda: _status(Browser(node.url).signup(name, PASSWORD), 302), timeout=10)
    return name


def _failures(node: Node, name: str) -> int:
    return node.call("failures_count", subjects=[f"user:{name}"])[f"user:{name}"]["n"]


def measure(skew: int) -> None:
    env = {"LOGONMESH_THROTTLE_USER": str(LIMIT), "LOGONMESH_THROTTLE_WINDOW": str(WINDOW_S)}
    with LocalCluster(env=env) as cluster:
        n1, n2 = cluster.start_nodes("n", 2)
        (s1,) = cluster.start_nodes("s", 1, clock_offset_s=skew)
        deadline = time.monotonic() + 5  # a few pings: the estimate keeps the best of the last four
        while time.monotonic() < deadline:
            time.sleep(0.5)
        for asker, peer in ((n1, "s1"), (n2, "s1"), (s1, "n1")):
            found = next(p for p in asker.call("peers")["peers"] if p["name"] == peer)
            print(f"skew {skew:+d} s: {asker.name} -> {peer}: offset {found['clock_offset_ms']} ms, "
                  f"round trip {found['clock_rtt_ms']} ms")
        name = _user(n1)
        eventually(lambda: _status(Browser(s1.url).login(name, PASSWORD), 302), timeout=10)
        started = time.monotonic()  # the window counts from the first failure
        for _ in range(LIMIT):
            Browser(s1.url).login(name, "wrong password")
        ended: dict[str, float] = {}
        while len(ended) < 3 and time.monotonic() - started < WINDOW_S + 10:
            for node in (n1, n2, s1):
                if node.name not in ended and _failures(node, name) < LIMIT:
                    ended[node.name] = round(time.monotonic() - started, 2)
        print(f"skew {skew:+d} s: a {WINDOW_S} s throttle window ended after {ended}")
        for home in (s1, n1, n2, s1):
            browser = Browser(home.url)
            user = _user(home)
            eventually(lambda: _status(browser.login(user, PASSWORD), 302), timeout=10)
            browser.logout()
        started = time.monotonic()
        eventually(cluster.converged, timeout=10, interval=0.01)
        converged_ms = (time.monotonic() - started) * 1000
        before = sum(n.status()["stats"].get("repairs_started", 0) for n in (n1, n2, s1))
        time.sleep(3)
        after = sum(n.status()["stats"].get("repairs_started", 0) for n in (n1, n2, s1))
        print(f"skew {skew:+d} s: digests equal {converged_ms:.0f} ms after the last write; "
              f"repairs started in the next 3 s: {after - before}")


if __name__ == "__main__":
    for skew_s in (300, -300):
        measure(skew_s)
