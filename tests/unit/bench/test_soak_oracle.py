"""The soak's oracle (bench/soak_load.py) can fail: each rule an answer must keep is broken once here
(wrong status, nonce, serial, signature, HTTP status, OCSP error) and counted; a right answer is not;
inside a change window both statuses, and a tryLater, are allowed for the changing serial."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from bench.soak_load import Ca, Reply, Tally, check_answer, load_ca

NOW = datetime.now(UTC).replace(microsecond=0)


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
          serial: int) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
            .sign(signer, hashes.SHA256()))


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Soak Test CA")])
        self.ca = _cert("Soak Test CA", self.key, name, self.key, 1)
        self.leaves = {s: _cert(f"leaf {s}", ec.generate_private_key(ec.SECP256R1()), name, self.key, s)
                       for s in (0x10, 0x11, 0x12)}
        (tmp / "ca.pem").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        for s, c in self.leaves.items():
            (tmp / f"leaf-{s:x}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (tmp / "index.txt").write_text("V\t301231235959Z\t\t10\tunknown\t/CN=a\n"
                                       "R\t301231235959Z\t250101000000Z,keyCompromise\t11\tunknown\t/CN=b\n")

    def answer(self, serial: int, status: ocsp.OCSPCertStatus, nonce: bytes | None = None) -> bytes:
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=self.leaves[serial], issuer=self.ca, algorithm=hashes.SHA1(), cert_status=status,
            this_update=NOW, next_update=NOW + timedelta(hours=1),
            revocation_time=NOW - timedelta(days=1) if revoked else None, revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca)
        if nonce is not None:
            b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def ok(body: bytes, status: int = 200) -> Reply:
    return Reply(status, {b"content-type": b"application/ocsp-response"}, body, False)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pki, Ca]:
    p = Pki(tmp_path)
    return p, load_ca("soak", tmp_path, "index")


def test_the_data_is_read_from_the_files(pki: tuple[Pki, Ca]) -> None:
    _, ca = pki
    assert ca.status == {0x10: "good", 0x11: "revoked"}
    assert ca.leaves == [0x10, 0x11, 0x12]
    assert ca.expected(0x12, time.monotonic()) == {"unknown"}


def test_right_answers_pass(pki: tuple[Pki, Ca]) -> None:
    p, ca = pki
    t = Tally()
    check_answer(t, ca, 0x10, None, ok(p.answer(0x10, ocsp.OCSPCertStatus.GOOD)), "k", time.monotonic())
    check_answer(t, ca, 0x11, b"n" * 16, ok(p.answer(0x11, ocsp.OCSPCertStatus.REVOKED, b"n" * 16)), "k",
                 time.monotonic())
    check_answer(t, ca, 0x12, None, ok(p.answer(0x12, ocsp.OCSPCertStatus.UNKNOWN)), "k", time.monotonic())
    assert not t.failed and not t.wrong, t.notes


@pytest.mark.parametrize("case", ["status", "nonce-missing", "nonce-other", "serial", "signature"])
def test_wrong_answers_are_counted(pki: tuple[Pki, Ca], case: str) -> None:
    p, ca = pki
    nonce = b"n" * 16 if case.startswith("nonce") else None
    if case == "signature":  # signed by another key than the CA certificate's: cryptography will not
        good = p.answer(0x10, ocsp.OCSPCertStatus.GOOD)  # build that, so the signature is damaged instead
        sig = ocsp.load_der_ocsp_response(good).signature
        body = good.replace(sig, sig[:-1] + bytes([sig[-1] ^ 1]))
    else:
        body = {
            "status": lambda: p.answer(0x10, ocsp.OCSPCertStatus.REVOKED),
            "nonce-missing": lambda: p.answer(0x10, ocsp.OCSPCertStatus.GOOD),
            "nonce-other": lambda: p.answer(0x10, ocsp.OCSPCertStatus.GOOD, b"m" * 16),
            "serial": lambda: p.answer(0x12, ocsp.OCSPCertStatus.GOOD),
        }[case]()
    t = Tally()
    check_answer(t, ca, 0x10, nonce, ok(body), "k", time.monotonic())
    assert t.wrong["k"] == 1 and not t.failed, t.notes


def test_failed_answers_are_counted(pki: tuple[Pki, Ca]) -> None:
    _, ca = pki
    t = Tally()
    check_answer(t, ca, 0x10, None, ok(b"", 503), "k", time.monotonic())
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    check_answer(t, ca, 0x10, None, ok(try_later.public_bytes(serialization.Encoding.DER)), "k", time.monotonic())
    assert t.failed["k"] == 2 and t.window_errors == 0


def test_a_change_window_allows_both_statuses_and_errors(pki: tuple[Pki, Ca]) -> None:
    p, ca = pki
    ca.changing[0x10] = (frozenset({"good", "revoked"}), time.monotonic() + 60)
    t = Tally()
    check_answer(t, ca, 0x10, None, ok(p.answer(0x10, ocsp.OCSPCertStatus.REVOKED)), "k", time.monotonic())
    check_answer(t, ca, 0x10, None, ok(p.answer(0x10, ocsp.OCSPCertStatus.GOOD)), "k", time.monotonic())
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    check_answer(t, ca, 0x10, None, ok(try_later.public_bytes(serialization.Encoding.DER)), "k", time.monotonic())
    # Another serial of the CA is not changing: its tryLater is a failure.
    check_answer(t, ca, 0x11, None, ok(try_later.public_bytes(serialization.Encoding.DER)), "k", time.monotonic())
    internal = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
    check_answer(t, ca, 0x10, None, ok(internal.public_bytes(serialization.Encoding.DER)), "k", time.monotonic())
    assert not t.wrong and t.window_errors == 1 and t.failed["k"] == 2  # internalError: never allowed
    t.failed.clear()
    ca.changing[0x10] = (frozenset({"good", "revoked"}), time.monotonic() - 1)  # the window is over
    check_answer(t, ca, 0x10, None, ok(p.answer(0x10, ocsp.OCSPCertStatus.REVOKED)), "k", time.monotonic())
    assert t.wrong["k"] == 1
