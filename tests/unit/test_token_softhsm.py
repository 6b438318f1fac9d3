"""signer.token against a real SoftHSM 2 token (the session's ``softhsm`` fixture, tests/conftest.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key

from signer.mechanisms import SignatureAlgorithm, algorithm_for_key
from signer.token import Pkcs11Token, TokenError, read_pin

ROOT = Path(__file__).resolve().parents[2]

KEYS = [
    # spec, expected algorithm, key class, curve or RSA size
    ("rsa2048", SignatureAlgorithm.RSA_SHA256, rsa.RSAPublicKey, 2048),
    ("p256", SignatureAlgorithm.ECDSA_SHA256, ec.EllipticCurvePublicKey, "secp256r1"),
    ("p384", SignatureAlgorithm.ECDSA_SHA384, ec.EllipticCurvePublicKey, "secp384r1"),
]


def verify(public_key: object, algorithm: SignatureAlgorithm, signature: bytes, data: bytes) -> None:
    if algorithm is SignatureAlgorithm.RSA_SHA256:
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]
    elif algorithm is SignatureAlgorithm.ECDSA_SHA256:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
    else:
        public_key.verify(signature, hashlib.sha384(data).digest(),  # type: ignore[attr-defined]
                          ec.ECDSA(Prehashed(hashes.SHA384())))


@pytest.mark.parametrize("spec,algorithm,key_class,size", KEYS)
def test_keygen_sign_verify(softhsm, spec: str, algorithm: SignatureAlgorithm, key_class: type,
                            size: object) -> None:
    token = softhsm.token()
    label = f"keygen-{spec}"
    spki = token.generate_key(label, spec)
    assert token.has_key(label)
    assert token.public_key(label) == spki

    attrs = token.key_attributes(label)
    assert attrs.sensitive is True
    assert attrs.extractable is False

    public_key = load_der_public_key(spki)
    assert isinstance(public_key, key_class)
    if isinstance(public_key, rsa.RSAPublicKey):
        assert public_key.key_size == size
    else:
        assert public_key.curve.name == size
    assert algorithm_for_key(spki) is algorithm

    data = b"ResponseData to be signed " + spec.encode()
    signature = token.sign(label, algorithm, data)
    verify(public_key, algorithm, signature, data)
    with pytest.raises(InvalidSignature):
        verify(public_key, algorithm, signature, data + b"!")


def test_generate_refuses_existing_label(softhsm) -> None:
    token = softhsm.token()
    token.generate_key("dup", "p256")
    with pytest.raises(TokenError, match="already exists"):
        token.generate_key("dup", "p256")


def test_missing_key_is_named(softhsm) -> None:
    with pytest.raises(TokenError, match="no private key labelled 'nope'"):
        softhsm.token().sign("nope", SignatureAlgorithm.ECDSA_SHA256, b"x")
    with pytest.raises(TokenError, match="no public key labelled 'nope'"):
        softhsm.token().public_key("nope")


def test_wrong_pin_names_the_cause(softhsm) -> None:
    # The spare token: nobody in this process is logged in to it.
    with pytest.raises(TokenError, match="wrong PIN"):
        Pkcs11Token(softhsm.module, pin="not-the-pin", token_label=softhsm.spare_label)


def test_unknown_token_label(softhsm) -> None:
    with pytest.raises(TokenError, match="no token with label 'no-such-token'"):
        Pkcs11Token(softhsm.module, pin=softhsm.pin, token_label="no-such-token")


def test_bad_module(softhsm, tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot load PKCS#11 module"):
        Pkcs11Token(tmp_path / "missing.so", pin="x", token_label="x")


@pytest.mark.parametrize("content,match", [("", "is empty"), ("\n", "is empty")])
def test_read_pin_file_errors(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "pin"
    f.write_text(content)
    with pytest.raises(TokenError, match=match):
        read_pin(f, None)


def test_read_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pin"
    f.write_text("s3cret\nignored\n")
    assert read_pin(f, None) == "s3cret"
    monkeypatch.setenv("TEST_TOKEN_PIN", "from-env")
    assert read_pin(None, "TEST_TOKEN_PIN") == "from-env"
    monkeypatch.delenv("TEST_TOKEN_PIN")
    with pytest.raises(TokenError, match="TEST_TOKEN_PIN"):
        read_pin(None, "TEST_TOKEN_PIN")


def test_wrong_pin_in_fresh_process(softhsm) -> None:
    """A fresh process (its own C_Initialize and login state) gets the same operator message."""
    code = ("from signer.token import Pkcs11Token, TokenError\n"
            "try:\n"
            f"    Pkcs11Token({softhsm.module!r}, pin='wrong', token_label={softhsm.label!r})\n"
            "except TokenError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=softhsm.env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "wrong PIN" in out.stdout
