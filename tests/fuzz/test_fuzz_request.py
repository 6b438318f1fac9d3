"""decode_request either returns a ParsedRequest or raises OCSPError, whatever the bytes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ocsp.errors import OCSPError
from shared.ocsp.request import MAX_NONCE, MIN_NONCE, decode_request, nonce_length
from shared.ocsp.types import ParsedRequest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SEEDS = [p.read_bytes() for p in sorted(VECTORS.glob("req-*.der"))]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    try:
        parsed = decode_request(data)
    except OCSPError:
        return
    assert isinstance(parsed, ParsedRequest)
    assert 1 <= len(parsed.cert_ids) <= 64
    for cid in parsed.cert_ids:
        assert isinstance(cid.serial, bytes) and 1 <= len(cid.serial) <= 64
        hash(cid)
    if parsed.nonce is not None:
        assert MIN_NONCE <= nonce_length(parsed.nonce) <= MAX_NONCE


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid-ish vector with a few bytes flipped, inserted, deleted or the tail cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x04, 0x30, 0x7F, 0x80, 0x81, 0x82, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 4))]
        else:
            del data[i:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_in_a_sequence(data: bytes) -> None:
    # get past the outer tag so the parser goes deeper than the first byte
    check(b"\x30" + (bytes([len(data)]) if len(data) < 0x80 else bytes([0x82]) + len(data).to_bytes(2, "big"))
          + data)


@FUZZ
@given(mutated())
def test_mutated_vectors(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=300))
def test_nonce_length_never_raises(value: bytes) -> None:
    n = nonce_length(value)
    assert 0 <= n <= len(value)
