"""issuer_keys / cert_id_for / IssuerIndex, checked against CertIDs that cryptography and openssl compute."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from shared.ocsp.certid import IssuerIndex, cert_id_for, issuer_keys
from shared.ocsp.request import decode_request
from shared.ocsp.types import CertId, HashAlgorithm, IssuerKey

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CA_DER = (VECTORS / "ca.der").read_bytes()
LEAF_DER = (VECTORS / "leaf.der").read_bytes()
RESPONDER_DER = (VECTORS / "responder.der").read_bytes()
CA = x509.load_der_x509_certificate(CA_DER)
LEAF = x509.load_der_x509_certificate(LEAF_DER)

HASHES = {HashAlgorithm.SHA1: hashes.SHA1(), HashAlgorithm.SHA256: hashes.SHA256(),
          HashAlgorithm.SHA384: hashes.SHA384(), HashAlgorithm.SHA512: hashes.SHA512()}


def _rsa_ca() -> tuple[bytes, bytes]:
    """An RSA CA (SPKI has NULL parameters) with a long UTF8 subject, and a leaf with a 20-octet serial."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Prüf-CA " + "x" * 50),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "y" * 60)])
    t = datetime(2025, 1, 1, tzinfo=UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(7).not_valid_before(t).not_valid_after(t.replace(year=2030))
          .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(leaf_key.public_key())
            .serial_number((1 << 159) - 12345).not_valid_before(t).not_valid_after(t.replace(year=2030))
            .sign(key, hashes.SHA256()))
    return ca.public_bytes(serialization.Encoding.DER), leaf.public_bytes(serialization.Encoding.DER)


RSA_CA_DER, RSA_LEAF_DER = _rsa_ca()
PAIRS = {"ec": (CA_DER, LEAF_DER), "rsa": (RSA_CA_DER, RSA_LEAF_DER)}


def reference_cert_id(leaf_der: bytes, ca_der: bytes, alg: HashAlgorithm) -> CertId:
    """CertID as cryptography's OCSPRequestBuilder computes it."""
    leaf = x509.load_der_x509_certificate(leaf_der)
    ca = x509.load_der_x509_certificate(ca_der)
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, HASHES[alg]).build()
    serial = leaf.serial_number
    return CertId(alg, req.issuer_name_hash, req.issuer_key_hash,
                  serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True))


@pytest.mark.parametrize("pki", sorted(PAIRS))
@pytest.mark.parametrize("alg", list(HashAlgorithm))
def test_cert_id_for_matches_cryptography(pki: str, alg: HashAlgorithm) -> None:
    ca_der, leaf_der = PAIRS[pki]
    assert cert_id_for(leaf_der, ca_der, alg) == reference_cert_id(leaf_der, ca_der, alg)


@pytest.mark.parametrize("pki", sorted(PAIRS))
def test_issuer_keys_cover_every_algorithm(pki: str) -> None:
    ca_der, leaf_der = PAIRS[pki]
    keys = issuer_keys(ca_der)
    assert set(keys) == set(HashAlgorithm)
    for alg, key in keys.items():
        assert key == IssuerKey.of(reference_cert_id(leaf_der, ca_der, alg))


def test_default_algorithm_is_sha1() -> None:
    assert cert_id_for(LEAF_DER, CA_DER).hash_algorithm is HashAlgorithm.SHA1


@pytest.mark.parametrize("digest", ["", "-sha256", "-sha384", "-sha512"])
def test_cert_id_for_matches_openssl(tmp_path: Path, digest: str) -> None:
    (tmp_path / "ca.pem").write_bytes(CA.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(LEAF.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-no_nonce", "-issuer", str(tmp_path / "ca.pem"),
                    *([digest] if digest else []), "-cert", str(tmp_path / "leaf.pem"), "-reqout", str(out)],
                   check=True, capture_output=True)
    (cid,) = decode_request(out.read_bytes()).cert_ids
    assert cert_id_for(LEAF_DER, CA_DER, cid.hash_algorithm) == cid


def test_index_finds_issuer_under_every_algorithm() -> None:
    index: IssuerIndex[str] = IssuerIndex()
    index.add(CA_DER, "ec")
    index.add(RSA_CA_DER, "rsa")
    for name, (ca_der, leaf_der) in PAIRS.items():
        for alg in HashAlgorithm:
            assert index.get(IssuerKey.of(cert_id_for(leaf_der, ca_der, alg))) == name
    assert index.values() == ["ec", "rsa"]
    assert len(index) == 2


@pytest.mark.parametrize("key", [
    # the responder certificate is not an issuer in the index
    IssuerKey.of(cert_id_for(LEAF_DER, RESPONDER_DER)),
    # right name hash, wrong key hash; right key hash, wrong name hash
    IssuerKey(HashAlgorithm.SHA1, issuer_keys(CA_DER)[HashAlgorithm.SHA1].issuer_name_hash, b"\x00" * 20),
    IssuerKey(HashAlgorithm.SHA1, b"\x00" * 20, issuer_keys(CA_DER)[HashAlgorithm.SHA1].issuer_key_hash),
    # the SHA-256 hashes labelled SHA-384
    IssuerKey(HashAlgorithm.SHA384, issuer_keys(CA_DER)[HashAlgorithm.SHA256].issuer_name_hash,
              issuer_keys(CA_DER)[HashAlgorithm.SHA256].issuer_key_hash),
])
def test_index_misses(key: IssuerKey) -> None:
    index: IssuerIndex[str] = IssuerIndex()
    index.add(CA_DER, "ec")
    assert index.get(key) is None


def test_index_refuses_the_same_issuer_twice() -> None:
    index: IssuerIndex[int] = IssuerIndex()
    index.add(CA_DER, 1)
    with pytest.raises(ValueError, match="already"):
        index.add(CA_DER, 2)
    assert index.values() == [1]


@pytest.mark.parametrize("bad", [b"", b"\x30\x00", LEAF_DER[:-1], LEAF_DER + b"\x00", b"not a certificate"])
def test_bad_certificates_raise_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        issuer_keys(bad)
    with pytest.raises(ValueError):
        cert_id_for(bad, CA_DER)
