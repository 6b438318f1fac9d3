"""Signature algorithms we sign with, and how each maps onto a PKCS#11 mechanism.

SoftHSM 2.6 has no CKM_ECDSA_SHA256/384, so ECDSA hashes in Python, signs the
digest with CKM_ECDSA and DER-encodes the raw r||s the token returns (``ecdsa_der``: a few
lines instead of asn1crypto's DSASignature, which cost 10 µs a signature on the token thread; the
bytes are the same, tests/unit/signer/test_mechanisms.py). RSA uses CKM_SHA256_RSA_PKCS
(PKCS#1 v1.5). SHA-1 is never used for a signature.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from typing import Any

from asn1crypto import keys


class SignatureAlgorithm(enum.Enum):
    """Values are asn1crypto SignedDigestAlgorithmId names."""

    RSA_SHA256 = "sha256_rsa"
    ECDSA_SHA256 = "sha256_ecdsa"
    ECDSA_SHA384 = "sha384_ecdsa"


class UnsupportedKey(ValueError):
    pass


# Key specs ocspctl keygen accepts: name -> (kind, size or curve).
KEY_SPECS: dict[str, tuple[str, int | str]] = {
    "rsa2048": ("rsa", 2048),
    "rsa3072": ("rsa", 3072),
    "p256": ("ec", "secp256r1"),
    "p384": ("ec", "secp384r1"),
}

_CURVE_ALGORITHMS = {
    "secp256r1": SignatureAlgorithm.ECDSA_SHA256,
    "secp384r1": SignatureAlgorithm.ECDSA_SHA384,
}


def algorithm_for_key(spki_der: bytes) -> SignatureAlgorithm:
    """The signature algorithm for a SubjectPublicKeyInfo: RSA -> sha256WithRSA, P-256/P-384 -> ECDSA."""
    info = keys.PublicKeyInfo.load(spki_der)
    kind = info.algorithm
    if kind == "rsa":
        if info.bit_size < 2048:
            raise UnsupportedKey(f"RSA key of {info.bit_size} bits is too small (2048 at least)")
        return SignatureAlgorithm.RSA_SHA256
    if kind == "ec":
        curve = info.curve[1]
        if curve in _CURVE_ALGORITHMS:
            return _CURVE_ALGORITHMS[curve]
        raise UnsupportedKey(f"EC curve {curve} is not supported (P-256 or P-384)")
    raise UnsupportedKey(f"{kind} keys are not supported (RSA or EC P-256/P-384)")


def _der_integer(value: bytes) -> bytes:
    """DER INTEGER of the unsigned big-endian ``value``: leading zero octets dropped (one kept for
    zero), a 0x00 put before a first octet with its high bit set."""
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return _der_tlv(0x02, value)


def _der_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = (n.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + n.to_bytes(size, "big") + content


def ecdsa_der(raw: bytes) -> bytes:
    """ECDSA-Sig-Value (RFC 3279 2.2.3: SEQUENCE { r INTEGER, s INTEGER }) of the PKCS#11 signature
    ``raw`` (r || s, two halves of equal length), in DER: the bytes asn1crypto's
    ``DSASignature.from_p1363(raw).dump()`` gives. ValueError for an empty or odd-length ``raw``."""
    half, odd = divmod(len(raw), 2)
    if not half or odd:
        raise ValueError(f"an ECDSA signature from the token of {len(raw)} octets (r || s expected)")
    return _der_tlv(0x30, _der_integer(raw[:half]) + _der_integer(raw[half:]))


@functools.cache
def _mechanisms() -> tuple[Any, Any]:
    """(CKM_SHA256_RSA_PKCS, CKM_ECDSA), imported once: importing this module needs no PKCS#11 library."""
    from pkcs11 import Mechanism

    return Mechanism.SHA256_RSA_PKCS, Mechanism.ECDSA


def sign_with_key(private_key: object, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
    """Sign ``data`` with a python-pkcs11 private key; return the X.509-ready signature value."""
    rsa_pkcs, ecdsa = _mechanisms()
    if algorithm is SignatureAlgorithm.RSA_SHA256:
        return private_key.sign(data, mechanism=rsa_pkcs)  # type: ignore[attr-defined]
    digest = (hashlib.sha256 if algorithm is SignatureAlgorithm.ECDSA_SHA256 else hashlib.sha384)(data).digest()
    return ecdsa_der(private_key.sign(digest, mechanism=ecdsa))  # type: ignore[attr-defined]
