"""An order-independent digest of the cache, kept as a small hash tree.

Each entry hashes to 128 bits from its key and version.  Keys fall into
``LEAVES`` buckets by a hash of the key alone; a leaf is the XOR of its
entries' hashes, a group the XOR of ``FANOUT`` leaves, and the root the XOR of
the groups.  XOR makes every update O(1): the old hash is XORed out of one
leaf, one group and the root, the new one in.  Two caches with the same
entries have the same tree, whatever order they learnt them in; when roots
differ, comparing groups and then leaves narrows the difference to buckets.
"""

from __future__ import annotations

from hashlib import blake2b

FANOUT = 64
LEAVES = FANOUT * FANOUT


def bucket_of(kind: str, key: str) -> int:
    h = blake2b(f"{kind}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % LEAVES


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
        return self.root_int.to_bytes(16, "little")
