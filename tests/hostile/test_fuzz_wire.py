"""The wire decoder, in process, against random and mutated frames: it may only ever raise WireError.

Every daemon socket and the web's daemon client go through ``wire.decode``,
so any other exception here would be a handler failure on a live node.  The
inputs start from genuine signed frames of every type and damage them the
ways an attacker or a bad link would.  The signed kinds (garbage, random
msgpack, a broken schema or scrambled bytes under a valid MAC) are what a
cookie holder with a bug could send: they get past the signature and reach
the parser and the schema check.

Each hypothesis example is a recipe (a frame, a seed) that a cheap loop
expands into many inputs, so the suite tries tens of thousands of frames in
seconds; ``LOGONMESH_FUZZ_EXAMPLES`` scales it (see hostile_kit).
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logonmesh.daemon import wire
from hostile_kit import (FUZZ_EXAMPLES, MSGPACK_VALUES, genuine_frames, hostile_frames, mutated, other_key,
                         pack, scramble, sign, tally, wrong_schema_bodies)

KEY = wire.wire_key(b"the hostile suite's cookie")
REASONS = {"truncated", "bad_signature", "malformed", "unknown_version", "unknown_type", "schema"}
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Structured msgpack values cost hypothesis far more to build than bytes: fewer examples, same expansion.
FUZZ_STRUCTURED = settings(FUZZ, max_examples=max(50, FUZZ_EXAMPLES // 5))
BATCH = {"min_size": 1, "max_size": 8}
EXPANSION = 48  # scrambled variants fed per example


def feed(frames: list[bytes]) -> list[str | None]:
    """Decode each frame; return each refusal reason (None when it decoded, which must then fit the schema)."""
    reasons: list[str | None] = []
    for frame in frames:
        tally["wire decoder, in process"] += 1
        try:
            env = wire.decode(KEY, frame)
        except wire.WireError as exc:
            assert exc.reason in REASONS, exc
            reasons.append(exc.reason)
            continue
        assert env.payload.keys() == wire.SCHEMA[env.type].keys()
        reasons.append(None)
    return reasons


def scrambled(body: bytes, seed: int, signed: bool) -> list[bytes]:
    """EXPANSION edits of one body, chained so that edits pile up; signed with the key or not."""
    rnd, out = random.Random(seed), []
    for _ in range(EXPANSION):
        body = scramble(body, rnd)
        out.append(sign(KEY, body) if signed else body + rnd.randbytes(wire.MAC_SIZE))
    return out


@FUZZ
@given(st.lists(st.binary(max_size=1024), **BATCH))
def test_random_bytes_are_refused(frames: list[bytes]) -> None:
    assert None not in feed(frames)


@FUZZ
@given(st.data(), st.integers(0, 2**32))
def test_mutations_of_genuine_frames_are_refused(data: st.DataObject, seed: int) -> None:
    """Bit flips, truncations, extensions, splices and a lost MAC: all break the signature."""
    frame = data.draw(genuine_frames(KEY))
    assert feed([frame]) == [None]
    mutants = data.draw(st.lists(mutated(frame), **BATCH)) + scrambled(frame[:-wire.MAC_SIZE], seed, False)
    assert set(feed([m for m in mutants if m != frame])) <= {"truncated", "bad_signature"}


@FUZZ
@given(st.lists(genuine_frames(other_key()), **BATCH))
def test_frames_signed_with_another_cookie_are_refused(frames: list[bytes]) -> None:
    assert set(feed(frames)) == {"bad_signature"}


@FUZZ
@given(st.lists(st.binary(max_size=512), **BATCH))
def test_validly_signed_garbage_is_refused(bodies: list[bytes]) -> None:
    assert None not in feed([sign(KEY, body) for body in bodies])


@FUZZ_STRUCTURED
@given(st.lists(MSGPACK_VALUES, **BATCH), st.integers(0, 2**32))
def test_validly_signed_random_msgpack_is_refused(values: list, seed: int) -> None:
    """A random msgpack document is never a whole valid envelope, nor is a scrambled one."""
    assert None not in feed([sign(KEY, pack(value)) for value in values])
    assert None not in feed(scrambled(pack(values), seed, True))


@FUZZ
@given(genuine_frames(KEY), st.integers(0, 2**32))
def test_validly_signed_scrambled_envelopes_only_raise_wire_error(frame: bytes, seed: int) -> None:
    """Byte edits of a genuine body, re-signed: msgpack torn at every point, then the schema, must hold."""
    feed(scrambled(frame[:-wire.MAC_SIZE], seed, True))


@FUZZ_STRUCTURED
@given(st.lists(wrong_schema_bodies(), **BATCH), st.integers(0, 2**32))
def test_validly_signed_wrong_schemas_only_raise_wire_error(bodies: list[bytes], seed: int) -> None:
    """A damaged envelope may happen to stay valid (a field replaced by one of its own type); never a crash."""
    feed([sign(KEY, body) for body in bodies] + scrambled(bodies[0], seed, True))


@FUZZ_STRUCTURED
@given(st.lists(hostile_frames(KEY), **BATCH))
def test_any_mix_of_hostile_frames(frames: list[bytes]) -> None:
    feed(frames)
