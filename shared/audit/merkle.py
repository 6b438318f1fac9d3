"""RFC 6962 / RFC 9162 Merkle tree hashing, sans-IO.

Leaves and interior nodes are hashed in separate domains (a leaf is SHA-256(0x00 || data), a node
SHA-256(0x01 || left || right)), so a leaf can never pass for a node. ``CompactRange`` keeps an
append-only tree over leaves [0, size) in O(log size) state: one hash per set bit of ``size``, the
roots of the perfect subtrees the leaves split into, largest (leftmost) first.

The proof functions that take the whole leaf list (``inclusion_proof``, ``consistency_proof``,
``root_of``) follow the recursive definitions of RFC 6962 §2.1 literally; they are the reference the
fast paths are tested against and are meant for tests and offline tools, not for the hot path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The Merkle tree over leaves [0, size), as the roots of its perfect subtrees."""

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError("negative tree size")
        if len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of size {size} has {size.bit_count()} hashes, "
                             f"not {len(hashes)}")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("compact range hashes must be 32 bytes")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add a leaf *hash* (``leaf_hash(data)``) at index ``size``."""
        h = leaf
        s = self.size
        hashes = self._hashes
        while s & 1:
            h = node_hash(hashes.pop(), h)
            s >>= 1
        hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompactRange) and self.size == other.size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"CompactRange(size={self.size}, hashes={len(self._hashes)})"


# -- reference definitions (RFC 6962 §2.1) -------------------------------------------------------

def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes*, by the recursive definition."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves): the audit path of leaf ``index``."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return inclusion_proof(leaves[:k], index) + [root_of(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [root_of(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """PROOF(first, leaves): that the tree of size ``first`` is a prefix of this one."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise ValueError(f"size {first} is not within a tree of size {n}")
    if first in (0, n):
        return []

    def sub(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
        if m == len(d):
            return [] if complete else [root_of(d)]
        k = _split(len(d))
        if m <= k:
            return sub(m, d[:k], complete) + [root_of(d[k:])]
        return sub(m - k, d[k:], False) + [root_of(d[:k])]

    return sub(first, leaves, True)


# -- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------------

def verify_inclusion(leaf: bytes, index: int, size: int, proof: Iterable[bytes], root: bytes) -> bool:
    """Whether ``leaf`` (a leaf hash) is at ``index`` of the tree of ``size`` with ``root``."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, proof: Sequence[bytes], first_root: bytes,
                       second_root: bytes) -> bool:
    """Whether the tree (``first``, ``first_root``) is a prefix of (``second``, ``second_root``)."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
