"""Responses built by shared.ocsp.response, signed with software keys, read back by independent parsers.

cryptography (``load_der_ocsp_response``) checks fields and signatures, asn1crypto checks that the
DER is canonical (parse + re-encode gives the same bytes), openssl verifies one end to end, and a
small TLV reader below checks the nonce octets byte for byte.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from asn1crypto import core
from asn1crypto import ocsp as a_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from shared.ocsp.certid import cert_id_for
from shared.ocsp.response import (
    EPOCH,
    ERROR_RESPONSES,
    build_response_data,
    error_response,
    responder_id,
    signed_response,
)
from shared.ocsp.types import (
    CertId,
    CertStatus,
    HashAlgorithm,
    ResponseStatus,
    Revocation,
    RevocationReason,
    SingleStatus,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CA_DER = (VECTORS / "ca.der").read_bytes()
LEAF_DER = (VECTORS / "leaf.der").read_bytes()
RESPONDER_DER = (VECTORS / "responder.der").read_bytes()
RESPONDER_KEY = serialization.load_pem_private_key((VECTORS / "responder-key.pem").read_bytes(), None)
RESPONDER = x509.load_der_x509_certificate(RESPONDER_DER)

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
THIS = NOW - timedelta(minutes=5)
NEXT = NOW + timedelta(hours=1)
REVOKED_AT = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
INVALID_FROM = datetime(2025, 5, 30, 0, 0, 0, tzinfo=UTC)

NONCE_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.2")
EXTENDED_REVOKE_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.9")
SIGNATURE_OIDS = {"sha256_ecdsa": "1.2.840.10045.4.3.2", "sha384_ecdsa": "1.2.840.10045.4.3.3",
                  "sha256_rsa": "1.2.840.113549.1.1.11"}
CRYPTO_HASH = {HashAlgorithm.SHA1: hashes.SHA1, HashAlgorithm.SHA256: hashes.SHA256,
               HashAlgorithm.SHA384: hashes.SHA384, HashAlgorithm.SHA512: hashes.SHA512}


# -- signing helpers (the token's job in production) ------------------------------------------------
def _self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(3).not_valid_before(THIS).not_valid_after(NEXT).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P384_KEY = ec.generate_private_key(ec.SECP384R1())

# algorithm name -> (key, certificate DER, sign(tbs) -> signature)
SIGNERS: dict[str, tuple[object, bytes, Callable[[bytes], bytes]]] = {
    "sha256_ecdsa": (RESPONDER_KEY, RESPONDER_DER,
                     lambda d: RESPONDER_KEY.sign(d, ec.ECDSA(hashes.SHA256()))),
    "sha384_ecdsa": (P384_KEY, _self_signed(P384_KEY, "p384 responder"),
                     lambda d: P384_KEY.sign(d, ec.ECDSA(hashes.SHA384()))),
    "sha256_rsa": (RSA_KEY, _self_signed(RSA_KEY, "rsa responder"),
                   lambda d: RSA_KEY.sign(d, padding.PKCS1v15(), hashes.SHA256())),
}


def verify(resp: ocsp.OCSPResponse, key: object) -> None:
    pub = key.public_key()  # type: ignore[attr-defined]
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm)
    else:
        pub.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))


def make(statuses: list[SingleStatus], *, nonce: bytes | None = None, alg: str = "sha256_ecdsa",
         by: str = "key", include_cert: bool = True) -> tuple[bytes, bytes]:
    _key, cert, sign = SIGNERS[alg]
    tbs = build_response_data(responder_id=responder_id(cert, by), produced_at=NOW, statuses=statuses,
                              nonce=nonce)
    return tbs, signed_response(tbs, alg, sign(tbs), [cert] if include_cert else [])


# -- an independent DER reader, for byte-exact checks -----------------------------------------------
def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Split ``data`` into (tag, contents) elements. Definite lengths only."""
    out, i = [], 0
    while i < len(data):
        tag, first = data[i], data[i + 1]
        i += 2
        if first & 0x80:
            n = first & 0x7F
            length = int.from_bytes(data[i:i + n], "big")
            i += n
        else:
            length = first
        out.append((tag, data[i:i + length]))
        i += length
    assert i == len(data)
    return out


def response_extensions(tbs: bytes) -> list[tuple[str, bool, bytes]]:
    """(dotted OID, critical, raw extnValue octets) of each ResponseData extension."""
    ((_, body),) = tlvs(tbs)
    fields = tlvs(body)
    if fields[-1][0] != 0xA1:
        return []
    ((_, exts),) = tlvs(fields[-1][1])
    result = []
    for _, ext in tlvs(exts):
        parts = tlvs(ext)
        oid = core.ObjectIdentifier.load(bytes([0x06, len(parts[0][1])]) + parts[0][1]).dotted
        critical = len(parts) == 3 and parts[1] == (0x01, b"\xff")
        assert parts[-1][0] == 0x04
        result.append((oid, critical, parts[-1][1]))
    return result


def status(alg: HashAlgorithm = HashAlgorithm.SHA1, cert_status: CertStatus = CertStatus.GOOD,
           revocation: Revocation | None = None) -> SingleStatus:
    return SingleStatus(cert_id_for(LEAF_DER, CA_DER, alg), cert_status, THIS, NEXT, revocation)


def reason_flag(r: RevocationReason) -> x509.ReasonFlags:
    return x509.ReasonFlags[r.name.lower()]


# -- tests -------------------------------------------------------------------------------------------
CASES = {
    "good": status(),
    "unknown": status(cert_status=CertStatus.UNKNOWN),
    "revoked-no-reason": status(cert_status=CertStatus.REVOKED, revocation=Revocation(REVOKED_AT)),
    "revoked-key-compromise": status(cert_status=CertStatus.REVOKED,
                                     revocation=Revocation(REVOKED_AT, RevocationReason.KEY_COMPROMISE)),
    "revoked-invalidity-date": status(cert_status=CertStatus.REVOKED,
                                      revocation=Revocation(REVOKED_AT, RevocationReason.SUPERSEDED,
                                                            INVALID_FROM)),
    "extended-revoked": status(cert_status=CertStatus.REVOKED,
                               revocation=Revocation(EPOCH, RevocationReason.CERTIFICATE_HOLD)),
    "sha256-good": status(HashAlgorithm.SHA256),
    "sha384-revoked": status(HashAlgorithm.SHA384, CertStatus.REVOKED,
                             Revocation(REVOKED_AT, RevocationReason.CESSATION_OF_OPERATION)),
    "sha512-unknown": status(HashAlgorithm.SHA512, CertStatus.UNKNOWN),
}
CRYPTO_STATUS = {CertStatus.GOOD: ocsp.OCSPCertStatus.GOOD, CertStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
                 CertStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN}


def check_single(single: ocsp.OCSPSingleResponse | ocsp.OCSPResponse, expected: SingleStatus) -> None:
    cid = expected.cert_id
    assert single.certificate_status is CRYPTO_STATUS[expected.status]
    assert isinstance(single.hash_algorithm, CRYPTO_HASH[cid.hash_algorithm])
    assert single.issuer_name_hash == cid.issuer_name_hash
    assert single.issuer_key_hash == cid.issuer_key_hash
    assert single.serial_number == cid.serial_int
    assert single.this_update_utc == expected.this_update
    assert single.next_update_utc == expected.next_update
    rev = expected.revocation
    if rev is None:
        assert single.revocation_time_utc is None
    else:
        assert single.revocation_time_utc == rev.time
        assert single.revocation_reason == (None if rev.reason is None else reason_flag(rev.reason))


@pytest.mark.parametrize("alg", sorted(SIGNERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_single_status_read_back_by_cryptography(case: str, alg: str) -> None:
    expected = CASES[case]
    tbs, der = make([expected], alg=alg)
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.tbs_response_bytes == tbs
    verify(resp, SIGNERS[alg][0])
    assert resp.signature_algorithm_oid.dotted_string == SIGNATURE_OIDS[alg]
    assert resp.produced_at_utc == NOW
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        SIGNERS[alg][0].public_key()).digest  # type: ignore[attr-defined]
    assert resp.responder_name is None
    assert [c.public_bytes(serialization.Encoding.DER) for c in resp.certificates] == [SIGNERS[alg][1]]
    check_single(resp, expected)

    single_exts = {e.oid: e for e in resp.single_extensions}
    if expected.revocation is not None and expected.revocation.invalidity_date is not None:
        ext = single_exts.pop(x509.oid.CRLEntryExtensionOID.INVALIDITY_DATE)
        assert not ext.critical
        assert ext.value.invalidity_date_utc == expected.revocation.invalidity_date
    assert single_exts == {}

    exts = {e.oid: e for e in resp.extensions}
    if case == "extended-revoked":
        ext = exts.pop(EXTENDED_REVOKE_OID)
        assert not ext.critical and ext.value.value == b"\x05\x00"
    assert exts == {}
    # version omitted (v1 default), canonical DER
    assert tlvs(tlvs(tbs)[0][1])[0][0] in (0xA1, 0xA2)
    assert a_ocsp.ResponseData.load(tbs).dump(force=True) == tbs
    assert a_ocsp.OCSPResponse.load(der).dump(force=True) == der


def test_many_statuses_in_order() -> None:
    statuses = [CASES[c] for c in sorted(CASES)]
    _, der = make(statuses)
    resp = ocsp.load_der_ocsp_response(der)
    singles = list(resp.responses)
    assert len(singles) == len(statuses)
    for single, expected in zip(singles, statuses):
        check_single(single, expected)
    # one extended-revoked status is enough for the response extension
    assert [e.oid for e in resp.extensions] == [EXTENDED_REVOKE_OID]


@pytest.mark.parametrize("nonce", [
    b"\x04\x01\x00",
    b"\x04\x10" + bytes(range(16)),
    b"\x04\x20" + bytes(range(32)),
    b"\x04\x81\x80" + bytes(range(128)),
    bytes(range(1, 17)),  # legacy client: raw nonce, not an OCTET STRING
    b"\x04\x05abc",  # looks like an OCTET STRING but is not one
])
def test_nonce_echoed_byte_exact(nonce: bytes) -> None:
    tbs, der = make([CASES["good"]], nonce=nonce)
    assert response_extensions(tbs) == [("1.3.6.1.5.5.7.48.1.2", False, nonce)]
    resp = ocsp.load_der_ocsp_response(der)
    verify(resp, RESPONDER_KEY)
    if nonce[0] == 0x04 and nonce[1] in (len(nonce) - 2, 0x81):
        assert resp.extensions.get_extension_for_oid(NONCE_OID).value.nonce == nonce[-nonce_len(nonce):]


def nonce_len(nonce: bytes) -> int:
    return nonce[2] if nonce[1] == 0x81 else nonce[1]


def test_nonce_and_extended_revoke_together() -> None:
    nonce = b"\x04\x08" + bytes(8)
    tbs, _ = make([CASES["good"], CASES["extended-revoked"]], nonce=nonce)
    assert response_extensions(tbs) == [("1.3.6.1.5.5.7.48.1.2", False, nonce),
                                         ("1.3.6.1.5.5.7.48.1.9", False, b"\x05\x00")]


@pytest.mark.parametrize("revocation,extended", [
    (Revocation(EPOCH, RevocationReason.CERTIFICATE_HOLD), True),
    (Revocation(EPOCH, RevocationReason.KEY_COMPROMISE), False),
    (Revocation(EPOCH), False),
    (Revocation(EPOCH + timedelta(seconds=1), RevocationReason.CERTIFICATE_HOLD), False),
    (Revocation(REVOKED_AT, RevocationReason.CERTIFICATE_HOLD), False),
])
def test_extended_revoke_only_for_the_rfc6960_form(revocation: Revocation, extended: bool) -> None:
    tbs, _ = make([status(cert_status=CertStatus.REVOKED, revocation=revocation)])
    assert (("1.3.6.1.5.5.7.48.1.9", False, b"\x05\x00") in response_extensions(tbs)) is extended


@pytest.mark.parametrize("reason", list(RevocationReason))
def test_every_reason(reason: RevocationReason) -> None:
    expected = status(cert_status=CertStatus.REVOKED, revocation=Revocation(REVOKED_AT, reason))
    _, der = make([expected])
    check_single(ocsp.load_der_ocsp_response(der), expected)


def test_responder_id_by_name() -> None:
    _, der = make([CASES["good"]], by="name", include_cert=False)
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.responder_name == RESPONDER.subject
    assert resp.responder_key_hash is None
    assert resp.certificates == []
    verify(resp, RESPONDER_KEY)


def test_responder_id_by_key_is_sha1_of_the_key_bits() -> None:
    rid = responder_id(RESPONDER_DER)
    expected = x509.SubjectKeyIdentifier.from_public_key(RESPONDER.public_key()).digest
    assert rid.name == "by_key" and rid.chosen.native == expected
    with pytest.raises(ValueError):
        responder_id(RESPONDER_DER, "serial")
    with pytest.raises(ValueError):
        responder_id(b"\x30\x00")


@pytest.mark.parametrize("given,text", [
    (datetime(2026, 3, 4, 5, 6, 7, 999999, tzinfo=UTC), b"20260304050607Z"),  # microseconds dropped
    (datetime(2026, 3, 4, 6, 6, 7, tzinfo=timezone(timedelta(hours=1))), b"20260304050607Z"),  # to UTC
    (datetime(2026, 3, 4, 0, 6, 7, tzinfo=timezone(timedelta(hours=-5))), b"20260304050607Z"),
    (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), b"09990102030405Z"),
])
def test_generalized_time_whole_seconds_zulu(given: datetime, text: bytes) -> None:
    rid = responder_id(RESPONDER_DER)
    tbs = build_response_data(responder_id=rid, produced_at=given, statuses=[CASES["good"]], nonce=None)
    fields = tlvs(tlvs(tbs)[0][1])
    assert fields[1] == (0x18, text)


@pytest.mark.parametrize("bad", [
    SingleStatus(cert_id_for(LEAF_DER, CA_DER), CertStatus.REVOKED, THIS, NEXT),  # no revocation
    SingleStatus(cert_id_for(LEAF_DER, CA_DER), CertStatus.GOOD, THIS, NEXT, Revocation(REVOKED_AT)),
    SingleStatus(cert_id_for(LEAF_DER, CA_DER), CertStatus.UNKNOWN, THIS, NEXT, Revocation(REVOKED_AT)),
    SingleStatus(CertId(HashAlgorithm.SHA256, b"\x00" * 20, b"\x00" * 20, b"\x01"), CertStatus.GOOD,
                 THIS, NEXT),
    SingleStatus(CertId(HashAlgorithm.SHA1, b"\x00" * 20, b"\x00" * 20, b""), CertStatus.GOOD, THIS, NEXT),
    SingleStatus(cert_id_for(LEAF_DER, CA_DER), CertStatus.GOOD, THIS.replace(tzinfo=None), NEXT),  # naive
])
def test_inconsistent_statuses_raise_value_error(bad: SingleStatus) -> None:
    with pytest.raises(ValueError):
        build_response_data(responder_id=responder_id(RESPONDER_DER), produced_at=NOW, statuses=[bad],
                            nonce=None)


def test_no_statuses_raise_value_error() -> None:
    with pytest.raises(ValueError):
        build_response_data(responder_id=responder_id(RESPONDER_DER), produced_at=NOW, statuses=[],
                            nonce=None)


@pytest.mark.parametrize("alg", ["sha1_rsa", "sha1_ecdsa", "md5_rsa", "rsassa_pss", "nonsense"])
def test_weak_or_unknown_signature_algorithms_refused(alg: str) -> None:
    with pytest.raises(ValueError):
        signed_response(b"\x30\x00", alg, b"sig", [])


@pytest.mark.parametrize("st", [s for s in ResponseStatus if s is not ResponseStatus.SUCCESSFUL])
def test_error_responses(st: ResponseStatus) -> None:
    der = error_response(st)
    assert der is ERROR_RESPONSES[st]
    assert der == bytes([0x30, 0x03, 0x0A, 0x01, int(st)])
    assert ocsp.load_der_ocsp_response(der).response_status is ocsp.OCSPResponseStatus(int(st))


def test_no_error_response_for_successful() -> None:
    assert ResponseStatus.SUCCESSFUL not in ERROR_RESPONSES
    with pytest.raises(ValueError):
        error_response(ResponseStatus.SUCCESSFUL)


def test_openssl_verifies_and_reads_status(tmp_path: Path) -> None:
    """openssl checks the signature against the delegated responder certificate and the CertID."""
    expected = CASES["revoked-key-compromise"]
    _, der = make([expected])
    pem = serialization.Encoding.PEM
    for name, data in {"ca.pem": CA_DER, "leaf.pem": LEAF_DER, "resp.pem": RESPONDER_DER}.items():
        (tmp_path / name).write_bytes(x509.load_der_x509_certificate(data).public_bytes(pem))
    (tmp_path / "resp.der").write_bytes(der)
    out = subprocess.run(["openssl", "ocsp", "-respin", str(tmp_path / "resp.der"),
                          "-issuer", str(tmp_path / "ca.pem"), "-cert", str(tmp_path / "leaf.pem"),
                          "-CAfile", str(tmp_path / "ca.pem"), "-VAfile", str(tmp_path / "resp.pem"),
                          "-no_nonce", "-validity_period", str(10 ** 9)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Response verify OK" in out.stderr + out.stdout
    assert "leaf.pem: revoked" in out.stdout
    assert "Key Compromise" in out.stdout or "keyCompromise" in out.stdout


def test_build_response_data_is_fast() -> None:
    """Hot path: one status must cost well under the cheapest signature (~70 us for P-256)."""
    rid = responder_id(RESPONDER_DER)
    statuses = [CASES["good"]]
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        build_response_data(responder_id=rid, produced_at=NOW, statuses=statuses, nonce=b"\x04\x02ab")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 500e-6, f"{per_call * 1e6:.1f} us per call"
