"""The namespace tests' address range (tests/netns/netrange.py): pure, so no root is needed."""

from __future__ import annotations

import ipaddress
import random
import shutil

import pytest

from netrange import POOL, pick_free_net, taken_networks

Net = ipaddress.IPv4Network


def test_a_pick_overlaps_nothing_taken_and_stays_in_the_benchmarking_range() -> None:
    rng = random.Random(7)
    taken = [Net("198.18.0.0/17"), Net("198.19.200.0/24"), Net("198.19.3.4/32"), Net("10.0.0.0/8")]
    picks = {pick_free_net(taken, rng) for _ in range(200)}
    assert all(p.prefixlen == 24 and p.subnet_of(POOL) for p in picks)
    assert not any(p.overlaps(t) for p in picks for t in taken)
    assert len(picks) > 50, "a pick is random, so two runs rarely even try the same range"


def test_two_runs_do_not_collide_once_the_first_has_taken_its_range() -> None:
    first = pick_free_net([], random.Random(1))
    assert all(pick_free_net([first], random.Random(seed)) != first for seed in range(50))


def test_when_everything_is_taken_it_says_so() -> None:
    try:
        pick_free_net([POOL], random.Random(0))
    except RuntimeError as exc:
        assert "198.18.0.0/15" in str(exc)
    else:
        raise AssertionError("a full pool must not yield a range")


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip command")
def test_this_machine_s_addresses_count_as_taken() -> None:
    """Loopback is on every machine: reading ``ip -o addr`` must find it, and a pick must avoid what it found."""
    taken = taken_networks()
    assert Net("127.0.0.0/8") in taken
    assert not any(pick_free_net(taken, random.Random(3)).overlaps(t) for t in taken)
