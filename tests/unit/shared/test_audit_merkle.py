"""shared.audit.merkle: RFC 6962 hashing, the compact range, and proof verification.

The compact range is checked against the recursive definition (``root_of``) and the proof
verifiers (RFC 9162 algorithms) against proofs built by the recursive PATH/PROOF definitions.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_domain_separation() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    # a two-leaf tree's root is not the leaf hash of the two leaf hashes concatenated
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert root_of([a, b]) != leaf_hash(a + b)


def test_known_answer_eight_leaves() -> None:
    # The eight-leaf tree used throughout the RFC 6962 implementations' test suites.
    data = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"]
    rng = CompactRange()
    for d in data:
        rng.append(leaf_hash(d))
    assert rng.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert rng.size == 8 and len(rng.hashes) == 1


def test_compact_range_matches_definition_for_every_size_to_130() -> None:
    hs = leaves(130)
    rng = CompactRange()
    assert rng.root() == EMPTY_ROOT
    for n in range(1, 131):
        rng.append(hs[n - 1])
        assert rng.size == n
        assert len(rng.hashes) == n.bit_count()  # O(log n) state
        assert rng.root() == root_of(hs[:n]), n


@given(st.lists(st.binary(max_size=40), max_size=300))
def test_compact_range_property(data: list[bytes]) -> None:
    hs = [leaf_hash(d) for d in data]
    rng = CompactRange()
    for h in hs:
        rng.append(h)
    assert rng.root() == root_of(hs)
    # a range rebuilt from its own state continues identically
    again = CompactRange(rng.size, rng.hashes)
    extra = leaf_hash(b"more")
    again.append(extra)
    assert again.root() == root_of(hs + [extra])


def test_compact_range_rejects_bad_state() -> None:
    with pytest.raises(ValueError):
        CompactRange(3, [bytes(32)])  # size 3 needs two hashes
    with pytest.raises(ValueError):
        CompactRange(1, [b"short"])
    with pytest.raises(ValueError):
        CompactRange(-1)


def test_inclusion_proofs_all_sizes() -> None:
    hs = leaves(33)
    for size in range(1, 34):
        root = root_of(hs[:size])
        for index in range(size):
            proof = inclusion_proof(hs[:size], index)
            assert verify_inclusion(hs[index], index, size, proof, root), (index, size)
            assert not verify_inclusion(leaf_hash(b"other"), index, size, proof, root)
            if size > 1:
                assert not verify_inclusion(hs[index], (index + 1) % size, size, proof, root)
            if proof:
                bad = list(proof)
                bad[0] = bytes(32)
                assert not verify_inclusion(hs[index], index, size, bad, root)
                assert not verify_inclusion(hs[index], index, size, proof[:-1], root)
        assert not verify_inclusion(hs[0], size, size, [], root)


def test_consistency_proofs_all_sizes() -> None:
    hs = leaves(33)
    for second in range(34):
        r2 = root_of(hs[:second])
        for first in range(second + 1):
            r1 = root_of(hs[:first])
            proof = consistency_proof(hs[:second], first)
            assert verify_consistency(first, second, proof, r1, r2), (first, second)
            if 0 < first < second:
                assert not verify_consistency(first, second, proof, leaf_hash(b"x"), r2)
                assert not verify_consistency(first, second, proof, r1, leaf_hash(b"x"))
                bad = list(proof)
                bad[-1] = bytes(32)
                assert not verify_consistency(first, second, bad, r1, r2)
    assert not verify_consistency(5, 4, [], EMPTY_ROOT, EMPTY_ROOT)


def test_consistency_detects_a_rewritten_prefix() -> None:
    hs = leaves(20)
    forged = list(hs)
    forged[3] = leaf_hash(b"forged")
    proof = consistency_proof(forged, 10)
    assert not verify_consistency(10, 20, proof, root_of(hs[:10]), root_of(forged))
