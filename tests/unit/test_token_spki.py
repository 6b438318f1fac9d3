"""Pkcs11Token.public_key returns the same SPKI bytes a certificate for that key carries."""

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import pytest


@pytest.mark.parametrize("spec", ["rsa2048", "p256"])
def test_public_key_matches_openssl_encoding(softhsm, spec: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    token = softhsm.token()
    label = f"spki-{spec}"
    spki = token.generate_key(label, spec)
    canonical = load_der_public_key(spki).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki == canonical
    assert isinstance(load_der_public_key(spki), rsa.RSAPublicKey if spec.startswith("rsa") else
                      ec.EllipticCurvePublicKey)
