"""Signature algorithms we sign with, and how each maps onto a PKCS#11 mechanism.

SoftHSM 2.6 has no CKM_ECDSA_SHA256/384, so ECDSA hashes in Python, signs the
digest with CKM_ECDSA and DER-encodes the raw r||s the token returns. RSA uses
CKM_SHA256_RSA_PKCS (PKCS#1 v1.5). SHA-1 is never used for a signature.
"""

from __future__ import annotations

import enum
import hashlib

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


def sign_with_key(private_key: object, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
    """Sign ``data`` with a python-pkcs11 private key; return the X.509-ready signature value."""
    from pkcs11 import Mechanism
    from pkcs11.util.ec import encode_ecdsa_signature

    if algorithm is SignatureAlgorithm.RSA_SHA256:
        return private_key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)  # type: ignore[attr-defined]
    digest = (hashlib.sha256 if algorithm is SignatureAlgorithm.ECDSA_SHA256 else hashlib.sha384)(data).digest()
    raw = private_key.sign(digest, mechanism=Mechanism.ECDSA)  # type: ignore[attr-defined]
    return encode_ecdsa_signature(raw)
