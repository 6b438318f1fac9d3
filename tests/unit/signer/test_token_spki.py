"""Pkcs11Token.public_key returns the same SPKI bytes a certificate for that key carries."""

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


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


# python-pkcs11 finalises a search iterator of the dead session in __del__ and reports its error there.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sign_recovers_from_a_dropped_session(softhsm) -> None:
    """The HSM dropping the session (restart, logout) costs one retry on a new session, not the
    signer: the next signature works and last_error is clear."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    from signer.mechanisms import SignatureAlgorithm

    token = softhsm.token()
    spki = token.generate_key("session-drop", "p256")
    token._session.close()  # what an HSM restart does to us
    signature = token.sign("session-drop", SignatureAlgorithm.ECDSA_SHA256, b"data")
    load_der_public_key(spki).verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
    assert token.last_error is None
