"""decode_request on vectors from openssl, cryptography and a hand DER writer (tests/vectors/README.md).

Expected CertID hashes are computed here with cryptography + hashlib, not with shared.ocsp.certid.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from shared.ocsp.errors import MalformedRequest, OCSPError
from shared.ocsp.request import decode_request, nonce_length
from shared.ocsp.types import CertId, HashAlgorithm, ParsedRequest, ResponseStatus

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CA = x509.load_der_x509_certificate((VECTORS / "ca.der").read_bytes())
LEAF = x509.load_der_x509_certificate((VECTORS / "leaf.der").read_bytes())
LEAF_SERIAL = b"\x10\x01"


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def expected_cert_id(serial: bytes, alg: str = "sha1") -> CertId:
    name = CA.subject.public_bytes()
    key = CA.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)
    return CertId(HashAlgorithm(alg), hashlib.new(alg, name).digest(), hashlib.new(alg, key).digest(), serial)


def wrapped_nonce(n: int) -> bytes:
    raw = bytes((i * 7 + 1) & 0xFF for i in range(n))
    return bytes([0x04]) + (bytes([n]) if n < 0x80 else bytes([0x81, n])) + raw


# name -> (expected CertIDs, expected nonce extnValue or None)
OK = {
    "req-sha1.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-sha256.der": ([expected_cert_id(LEAF_SERIAL, "sha256")], None),
    "req-sha384.der": ([expected_cert_id(LEAF_SERIAL, "sha384")], None),
    "req-sha512.der": ([expected_cert_id(LEAF_SERIAL, "sha512")], None),
    "req-openssl-sha256-no-nonce.der": ([expected_cert_id(LEAF_SERIAL, "sha256")], None),
    "req-cryptography-nonce-32.der": ([expected_cert_id(LEAF_SERIAL, "sha256")],
                                      b"\x04\x20" + bytes(range(32))),
    "req-two-certs.der": ([expected_cert_id(LEAF_SERIAL), expected_cert_id(b"\x10\x02")], None),
    "req-mixed-hashes.der": (
        [expected_cert_id(LEAF_SERIAL, a) for a in ("sha1", "sha256", "sha384", "sha512")], None),
    "req-64-certs.der": ([expected_cert_id(i.to_bytes(2, "big")) for i in range(0x100, 0x140)], None),
    "req-hash-params-absent.der": ([expected_cert_id(LEAF_SERIAL, "sha256")], None),
    "req-serial-20-octets.der": ([expected_cert_id(b"\x7f" + b"\xab" * 19)], None),
    "req-serial-20-octets-sign.der": ([expected_cert_id(b"\x00" + b"\xab" * 20)], None),
    "req-serial-negative.der": ([expected_cert_id(b"\xff\x01")], None),
    "req-nonce-1.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(1)),
    "req-nonce-16.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(16)),
    "req-nonce-32.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(32)),
    "req-nonce-128.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(128)),
    "req-nonce-legacy-16.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(16)[2:]),
    "req-nonce-critical.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(16)),
    "req-noncritical-unknown-ext.der": ([expected_cert_id(LEAF_SERIAL)], wrapped_nonce(16)),
    "req-acceptable-responses.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-preferred-sig-algs.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-empty-extensions.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-single-noncritical-ext.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-version-v1-explicit.der": ([expected_cert_id(LEAF_SERIAL)], None),
    "req-requestor-name.der": ([expected_cert_id(LEAF_SERIAL)], None),
}

MALFORMED = {
    "req-serial-non-minimal.der": "not minimally encoded",
    "req-65-certs.der": "65 entries",
    "req-empty-list.der": "empty requestList",
    "req-md5.der": "unsupported CertID hash",
    "req-hash-params-integer.der": "not a DER OCSPRequest",
    "req-name-hash-short.der": "digest size",
    "req-key-hash-sha1-in-sha256.der": "digest size",
    "req-serial-empty.der": "empty serialNumber",
    "req-serial-65-octets.der": "serialNumber of 65 octets; RFC 5280 allows at most 20",
    "req-serial-21-octets.der": "serialNumber of 21 octets; RFC 5280 allows at most 20",
    "req-nonce-0.der": "nonce",
    "req-nonce-129.der": "nonce",
    "req-nonce-legacy-129.der": "nonce",
    "req-nonce-duplicate.der": "duplicate",
    "req-duplicate-ext.der": "duplicate",
    "req-critical-unknown-ext.der": "critical",
    "req-single-critical-ext.der": "critical singleRequest",
    "req-version-v2.der": "version",
    "req-extra-element.der": "unexpected elements",
    "req-trailing-bytes.der": "not a DER OCSPRequest",
    "req-truncated.der": "not a DER OCSPRequest",
    "req-garbage.der": "not a DER OCSPRequest",
    "req-not-a-sequence.der": "not a DER OCSPRequest",
}


@pytest.mark.parametrize("name", sorted(OK))
def test_accepted_vectors(name: str) -> None:
    cert_ids, nonce = OK[name]
    parsed = decode_request(vector(name))
    assert parsed == ParsedRequest(tuple(cert_ids), nonce)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_refused_vectors(name: str) -> None:
    with pytest.raises(MalformedRequest, match=MALFORMED[name]) as info:
        decode_request(vector(name))
    assert info.value.status is ResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("name", ["req-openssl-sha1-nonce.der", "req-openssl-signed.der"])
def test_openssl_vectors_agree_with_cryptography(name: str) -> None:
    der = vector(name)
    parsed = decode_request(der)
    ref = ocsp.load_der_ocsp_request(der)
    (cid,) = parsed.cert_ids
    assert cid == expected_cert_id(LEAF_SERIAL)
    assert cid.issuer_name_hash == ref.issuer_name_hash
    assert cid.issuer_key_hash == ref.issuer_key_hash
    assert cid.serial_int == ref.serial_number
    ext = ref.extensions.get_extension_for_class(x509.OCSPNonce)
    assert parsed.nonce == b"\x04\x10" + ext.value.nonce
    assert nonce_length(parsed.nonce) == 16


@pytest.mark.parametrize("alg,h", [("sha1", hashes.SHA1()), ("sha256", hashes.SHA256()),
                                   ("sha384", hashes.SHA384()), ("sha512", hashes.SHA512())])
@pytest.mark.parametrize("nonce", [None, b"\x01", bytes(range(16)), bytes(range(32)), bytes(range(128))])
def test_fresh_cryptography_requests(alg: str, h: hashes.HashAlgorithm, nonce: bytes | None) -> None:
    builder = ocsp.OCSPRequestBuilder().add_certificate(LEAF, CA, h)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)
    parsed = decode_request(der)
    assert parsed.cert_ids == (expected_cert_id(LEAF_SERIAL, alg),)
    if nonce is None:
        assert parsed.nonce is None
    else:
        assert parsed.nonce is not None and parsed.nonce.endswith(nonce)
        assert nonce_length(parsed.nonce) == len(nonce)


@pytest.mark.parametrize("extra", [["-no_nonce"], [], ["-sha384"], ["-sha512"]])
def test_fresh_openssl_requests(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "ca.pem").write_bytes(CA.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(LEAF.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(tmp_path / "ca.pem"), *extra,
                    "-cert", str(tmp_path / "leaf.pem"), "-reqout", str(out)],
                   check=True, capture_output=True)
    parsed = decode_request(out.read_bytes())
    alg = extra[0][1:] if extra and extra[0].startswith("-sha") else "sha1"
    assert parsed.cert_ids == (expected_cert_id(LEAF_SERIAL, alg),)
    assert (parsed.nonce is None) == ("-no_nonce" in extra)


@pytest.mark.parametrize("limit,ok", [(1, False), (63, False), (64, True), (65, True)])
def test_max_cert_ids(limit: int, ok: bool) -> None:
    der = vector("req-64-certs.der")
    if ok:
        assert len(decode_request(der, max_cert_ids=limit).cert_ids) == 64
    else:
        with pytest.raises(MalformedRequest):
            decode_request(der, max_cert_ids=limit)


def test_65_certs_accepted_with_higher_limit() -> None:
    assert len(decode_request(vector("req-65-certs.der"), max_cert_ids=65).cert_ids) == 65


@pytest.mark.parametrize("extn_value,length", [
    (b"", 0),
    (b"\x04\x00", 0),  # DER OCTET STRING, empty
    (b"\x04\x01\xaa", 1),
    (b"\x04\x10" + bytes(16), 16),
    (b"\x04\x81\x80" + bytes(128), 128),
    (b"\x04\x81\x81" + bytes(129), 129),
    (b"\x04\x82\x01\x00" + bytes(256), 256),
    (bytes(16), 16),  # legacy raw nonce
    (b"\x04\x05abc", 5),  # OCTET STRING header but wrong length: the whole value is the nonce
    (b"\x04\x81\x05abcde", 8),  # non-minimal length: not DER, so raw
    (b"\x04\x80abc\x00\x00", 7),  # indefinite length: not DER, so raw
    (b"\x24\x03\x04\x01a", 5),  # constructed: raw
])
def test_nonce_length(extn_value: bytes, length: int) -> None:
    assert nonce_length(extn_value) == length


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x00", b"\x30\x80\x00\x00", b"\x00" * 10, b"\xff" * 100,
                                  bytearray(vector("req-sha1.der")[:-1])])
def test_short_and_odd_inputs_are_malformed(data: bytes) -> None:
    with pytest.raises(OCSPError) as info:
        decode_request(data)
    assert isinstance(info.value, MalformedRequest)


def test_bytes_like_input_accepted() -> None:
    der = vector("req-two-certs.der")
    assert decode_request(bytearray(der)) == decode_request(memoryview(der)) == decode_request(der)
