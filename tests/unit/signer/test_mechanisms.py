"""signer.mechanisms.ecdsa_der writes the bytes asn1crypto's DSASignature.from_p1363 wrote before it
(what python-pkcs11's encode_ecdsa_signature returns), and what cryptography reads back as (r, s)."""

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from pkcs11.util.ec import encode_ecdsa_signature

from signer.mechanisms import ecdsa_der

# r || s halves: P-256, P-384, P-521 (66 octets: a long-form SEQUENCE length), and short ones.
HALVES = (32, 48, 66, 1, 2, 63, 64)


def _raw(r: bytes, s: bytes) -> bytes:
    assert len(r) == len(s)
    return r + s


EDGES = [
    _raw(b"\x00" * 32, b"\x00" * 32),  # zero: one 0x00 content octet
    _raw(b"\x80" + b"\x00" * 31, b"\x7f" + b"\xff" * 31),  # high bit set (0x00 prefix) and clear
    _raw(b"\x00" * 31 + b"\x01", b"\x00\x80" + b"\x00" * 30),  # leading zeros dropped, then a high bit
    _raw(b"\xff" * 32, b"\xff" * 32),
    _raw(b"\xff" * 48, b"\x00" * 47 + b"\x80"),
    _raw(b"\xff" * 66, b"\xff" * 66),  # 2 * (2 + 67) = 138 content octets: SEQUENCE length 0x81 0x8a
    _raw(b"\x01", b"\x80"),
]


@pytest.mark.parametrize("raw", EDGES, ids=lambda raw: raw.hex()[:16] + f"-{len(raw)}")
def test_edges_match_asn1crypto(raw: bytes) -> None:
    assert ecdsa_der(raw) == encode_ecdsa_signature(raw)


@given(st.sampled_from(HALVES).flatmap(lambda n: st.tuples(st.binary(min_size=n, max_size=n),
                                                           st.binary(min_size=n, max_size=n))))
def test_random_signatures_match_asn1crypto_and_cryptography(rs: tuple[bytes, bytes]) -> None:
    r, s = rs
    der = ecdsa_der(r + s)
    assert der == encode_ecdsa_signature(r + s)
    assert decode_dss_signature(der) == (int.from_bytes(r, "big"), int.from_bytes(s, "big"))


@pytest.mark.parametrize("raw", [b"", b"\x01\x02\x03"])
def test_odd_or_empty_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="r [|][|] s expected"):
        ecdsa_der(raw)
