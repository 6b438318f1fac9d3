"""A tiny test PKI for the frontend tests: CA certificates, leaves, CRLs and index.txt lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class TestCA:
    __test__ = False

    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=365)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.der = self.cert.public_bytes(serialization.Encoding.DER)
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, serial: int) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {serial:x}")]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=90))
            .sign(self.key, hashes.SHA256())
        )

    def crl(self, revoked: list[tuple[int, datetime, x509.ReasonFlags | None, datetime | None]], *,
            this_update: datetime = NOW, next_update: datetime | None = NOW + timedelta(days=1),
            signer: TestCA | None = None, pem: bool = False, number: int | None = None) -> bytes:
        b = x509.CertificateRevocationListBuilder().issuer_name(self.name).last_update(this_update)
        if number is not None:
            b = b.add_extension(x509.CRLNumber(number), critical=False)
        if next_update is not None:
            b = b.next_update(next_update)
        for serial, when, reason, invalidity in revoked:
            r = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            if reason is not None:
                r = r.add_extension(x509.CRLReason(reason), critical=False)
            if invalidity is not None:
                r = r.add_extension(x509.InvalidityDate(invalidity), critical=False)
            b = b.add_revoked_certificate(r.build())
        key = (signer or self).key
        if next_update is None:
            raise ValueError("cryptography's builder insists on nextUpdate: use crl_without_next_update")
        crl = b.sign(key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def crl_without_next_update(ca: TestCA) -> bytes:
    """A correctly signed CRL with no nextUpdate (cryptography's builder cannot make one)."""
    from asn1crypto import algos, crl
    from asn1crypto import x509 as ax509
    from cryptography.hazmat.primitives.asymmetric import ec as cec

    issuer = ax509.Name.load(ca.name.public_bytes())
    sig_alg = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    tbs = crl.TbsCertList({"version": "v2", "signature": sig_alg, "issuer": issuer,
                           "this_update": ax509.Time({"utc_time": NOW})})
    signature = ca.key.sign(tbs.dump(), cec.ECDSA(hashes.SHA256()))
    return crl.CertificateList({"tbs_cert_list": tbs, "signature_algorithm": sig_alg,
                                "signature": signature}).dump()
