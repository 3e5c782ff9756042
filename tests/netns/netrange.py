"""A /24 for one run of the namespace tests that nothing on this machine uses yet.

A fixed range (it was 198.51.100.0/24, .1 on the host itself) makes two runs on
one machine collide: the second run's host address and routes clash with the
first's.  Each run draws a /24 from 198.18.0.0/15 (RFC 2544, set aside for
benchmarking networks, so no real service lives there) that no address or route
of this host, or of any namespace on it, overlaps.
"""

from __future__ import annotations

import ipaddress
import random
import re
import shutil
import subprocess

POOL = ipaddress.ip_network("198.18.0.0/15")
CIDR_RE = re.compile(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)")
ROUTE_RE = re.compile(r"^(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\s")


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    return proc.stdout if proc.returncode == 0 else ""


def taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an address or a route names, here and in every namespace (none without ``ip``)."""
    if shutil.which("ip") is None:
        return []
    namespaces = [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]
    taken: list[ipaddress.IPv4Network] = []
    for ns in [None, *namespaces]:
        prefix = ["ip", "-n", ns] if ns else ["ip"]
        taken += [ipaddress.ip_network(c, strict=False) for c in CIDR_RE.findall(_run([*prefix, "-o", "addr"]))]
        for line in _run([*prefix, "-4", "route"]).splitlines():
            m = ROUTE_RE.match(line)
            if m:
                taken.append(ipaddress.ip_network(m.group(1), strict=False))
    return [net for net in taken if isinstance(net, ipaddress.IPv4Network)]


def pick_free_net(taken: list[ipaddress.IPv4Network], rng: random.Random) -> ipaddress.IPv4Network:
    """A random /24 of POOL that overlaps none of ``taken``; RuntimeError when every one is in use."""
    candidates = list(POOL.subnets(new_prefix=24))
    rng.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken):
            return net
    raise RuntimeError(f"every /24 of {POOL} is in use on this machine")


def free_prefix() -> str:
    """The first three octets of a free /24 (``198.18.7``), for this run's addresses."""
    net = pick_free_net(taken_networks(), random.SystemRandom())
    return str(net.network_address).rsplit(".", 1)[0]
