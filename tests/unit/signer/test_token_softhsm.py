"""signer.token against a real SoftHSM 2 token (the session's ``softhsm`` fixture, tests/conftest.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key

from signer.mechanisms import SignatureAlgorithm, algorithm_for_key
from signer.token import Pkcs11Token, TokenError, read_pin

ROOT = Path(__file__).resolve().parents[3]

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


@pytest.mark.parametrize("mode,warned", [(0o600, False), (0o400, False), (0o640, True), (0o644, True),
                                         (0o602, True)])
def test_read_pin_file_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool) -> None:
    f = tmp_path / "pin"
    f.write_text("s3cret\n")
    f.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="signer.token"):
        assert read_pin(f, None) == "s3cret"
    lines = [r.getMessage() for r in caplog.records if r.name == "signer.token"]
    assert bool(lines) == warned, lines
    if warned:
        assert f"mode {mode:04o}" in lines[0] and str(f) in lines[0]


def test_read_pin_env_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer takes the PIN out of its environment once read (nothing it starts inherits it)."""
    monkeypatch.setenv("TEST_TOKEN_PIN", "from-env")
    assert read_pin(None, "TEST_TOKEN_PIN") == "from-env"
    assert os.environ["TEST_TOKEN_PIN"] == "from-env"  # one-shot tools leave it
    assert read_pin(None, "TEST_TOKEN_PIN", consume=True) == "from-env"
    assert "TEST_TOKEN_PIN" not in os.environ


def test_wrong_pin_in_fresh_process(softhsm) -> None:
    """A fresh process (its own C_Initialize and login state) gets the same operator message."""
    code = ("from signer.token import Pkcs11Token, TokenError\n"
            "try:\n"
            f"    Pkcs11Token({softhsm.module!r}, pin='wrong', token_label={softhsm.label!r})\n"
            "except TokenError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=softhsm.env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "wrong PIN" in out.stdout


# -- the real ocsp-signer process against the SoftHSM token -------------------------------------------


def _signer_setup(softhsm, base: Path, *, pin: str | None = None) -> tuple[Path, Any, Any]:
    """A CA (software key) whose delegated responder key lives in the token; config files as an operator
    writes them."""
    from datetime import datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    token = softhsm.token()
    label = "proc-responder"
    spki = token.public_key(label) if token.has_key(label) else token.generate_key(label, "p256")
    audit_label = "proc-audit"  # the audit key is a key of its own (key separation)
    if not token.has_key(audit_label):
        token.generate_key(audit_label, "p256")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Process Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    responder = (x509.CertificateBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Process Test OCSP")]))
                 .issuer_name(ca_name).public_key(load_der_public_key(spki)).serial_number(2)
                 .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
                 .sign(ca_key, hashes.SHA256()))
    (base / "ca.d").mkdir()
    (base / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (base / "responder.pem").write_bytes(responder.public_bytes(serialization.Encoding.PEM))
    (base / "token.pin").write_text((pin or softhsm.pin) + "\n")
    (base / "token.pin").chmod(0o600)
    (base / "ca.d" / "proc.toml").write_text(
        'ca_cert = "../ca.pem"\n[responder]\ncert = "../responder.pem"\n'
        f'key_label = "{label}"\n[status]\nsource = "index"\npath = "index.txt"\n')
    conf = base / "signer.toml"
    conf.write_text(f'ca_dir = "ca.d"\n[listen]\naddress = "unix:{base / "s.sock"}"\n'
                    f'[token]\nmodule = "{softhsm.module}"\nlabel = "{softhsm.label}"\n'
                    'pin_file = "token.pin"\n'
                    f'[audit]\ndir = "audit"\nkey_label = "{audit_label}"\n')
    return conf, ca, responder


def _short(tmp_path: Path) -> Path:
    import tempfile

    from signer.unix_socket import MAX_PATH_BYTES, longest_private_path

    fits = longest_private_path(tmp_path / "s.sock") <= MAX_PATH_BYTES  # the signer's sockets there
    return tmp_path if fits else Path(tempfile.mkdtemp(prefix="sgn", dir="/tmp"))


def _signer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "signer", *args]


def test_check_and_wrong_pin(softhsm, tmp_path: Path) -> None:
    conf, _, _ = _signer_setup(softhsm, _short(tmp_path))
    ok = subprocess.run(_signer_cmd("--config", str(conf), "--check"), env=softhsm.env, cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "OK (1 responders" in ok.stdout
    (conf.parent / "token.pin").write_text("not-the-pin\n")
    bad = subprocess.run(_signer_cmd("--config", str(conf), "--check"), env=softhsm.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1].startswith(f"ocsp-signer: {conf}: token.pin_file: ")
    assert "wrong PIN" in bad.stderr


def test_signer_process_signs_with_softhsm(softhsm, tmp_path: Path) -> None:
    import signal
    import time

    import grpc
    from cryptography import x509
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import NameOID

    from shared.rpc import signer_pb2 as pb
    from shared.rpc import signer_pb2_grpc as pb_grpc

    base = _short(tmp_path)
    conf, ca, responder = _signer_setup(softhsm, base)
    log = base / "signer.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(_signer_cmd("--config", str(conf)), env=softhsm.env, cwd=ROOT, stdout=logf,
                                stderr=subprocess.STDOUT)
    try:
        address = f"unix:{base / 's.sock'}"
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SignerStub(channel)
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if stub.Health(pb.HealthRequest(), timeout=1).serving:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "signer not ready:\n" + log.read_text()
                time.sleep(0.05)

            leaf_key = ec.generate_private_key(ec.SECP256R1())
            leaf = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
                    .issuer_name(ca.subject).public_key(leaf_key.public_key()).serial_number(4242)
                    .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
                    .sign(leaf_key, hashes.SHA256()))  # signature irrelevant: only the CertID is used
            creq = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA256()).build()
            now = int(time.time())
            reply = stub.Sign(pb.SignRequest(request_id="proc", nonce=b"\x04\x08abcdefgh", responses=[
                pb.SingleStatus(cert_id=pb.CertId(hash_algorithm=pb.SHA256,
                                                  issuer_name_hash=creq.issuer_name_hash,
                                                  issuer_key_hash=creq.issuer_key_hash,
                                                  serial_number=(4242).to_bytes(2, "big")),
                                status=pb.GOOD, this_update=now, next_update=now + 3600)]), timeout=10)
            resp = ocsp.load_der_ocsp_response(reply.ocsp_response)
            assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert resp.serial_number == 4242
            responder.public_key().verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
            assert reply.generation == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    text = log.read_text()
    assert rc == 0, text
    assert "plaintext" in text and "serving on" in text and "stopped" in text
