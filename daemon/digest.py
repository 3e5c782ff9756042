"""An order-independent digest of the cache, kept as a small hash tree.

Each entry hashes to 128 bits from its key and version.  Keys fall into
``LEAVES`` buckets by a hash of the key alone; a leaf is the XOR of its
entries' hashes, a group the XOR of ``FANOUT`` leaves, and the root the XOR of
the groups.  XOR makes every update O(1): the old hash is XORed out of one
leaf, one group and the root, the new one in.  Two caches with the same
entries have the same tree, whatever order they learnt them in; when roots
differ, comparing groups and then leaves narrows the difference to buckets.

Why 64 x 64: a repair first ships the 64 group hashes (1 KiB), then the 64
leaves of each differing group (1 KiB each), then the versions of the keys in
each differing leaf.  With 4096 leaves, 100 000 users put ~24 keys in a leaf,
so k differences cost about k KiB of tree plus k x 24 versions, far below the
1% of a snapshot that we aim for; a third level would save little at that
size and add a round trip to every repair.
"""

from __future__ import annotations

from hashlib import blake2b
from zlib import crc32

FANOUT = 64
LEAVES = FANOUT * FANOUT


def bucket_of(kind: str, key: str) -> int:
    """Which leaf a key falls in: CRC-32 spreads keys evenly and costs a tenth of a cryptographic hash."""
    return crc32(f"{kind}\0{key}".encode()) % LEAVES


def entry_hash(kind: str, key: str, hlc: int, origin: str) -> int:
    h = blake2b(f"{kind}\0{key}\0{hlc}\0{origin}".encode(), digest_size=16).digest()
    return int.from_bytes(h, "little")


class Digest:
    def __init__(self) -> None:
        self.leaves = [0] * LEAVES
        self.groups = [0] * FANOUT
        self.root_int = 0

    def toggle(self, bucket: int, h: int) -> None:
        """XOR one entry hash in (or, applied twice, out)."""
        self.leaves[bucket] ^= h
        self.groups[bucket // FANOUT] ^= h
        self.root_int ^= h

    @property
    def root(self) -> bytes:
        return self.root_int.to_bytes(HASH_SIZE, "little")

    def group_bytes(self) -> bytes:
        return pack(self.groups)

    def leaf_bytes(self, groups: list[int]) -> bytes:
        """The leaves of some groups, in order: what the other side needs to compare."""
        return b"".join(pack(self.leaves[g * FANOUT:(g + 1) * FANOUT]) for g in groups)


HASH_SIZE = 16


def pack(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(HASH_SIZE, "little") for v in values)


def unpack(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + HASH_SIZE], "little") for i in range(0, len(data), HASH_SIZE)]


def differing(mine: list[int], theirs: list[int]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
