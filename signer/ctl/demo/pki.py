"""The demo's X.509 certificates: CA roots, delegated OCSP responder certificates, leaves.

The demo CA keys are ordinary software keys: they belong to a demo CA, not to the responder, whose
keys are generated in the token (only their public half reaches ``issue_responder_cert``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_private_key
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
RESPONDER_VALIDITY = dt.timedelta(days=365)
LEAF_VALIDITY = dt.timedelta(days=365)
BACKDATE = dt.timedelta(hours=1)


def name(cn: str) -> x509.Name:
    """The subject of every demo certificate: O=OCSP Demo, CN=``cn``."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OCSP Demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def serial() -> int:
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1 | 1 << 64


def load_pem_key(path: Path) -> Any:
    return load_pem_private_key(path.read_bytes(), password=None)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not this CA's (issue again)
        return False


def key_usage(**kw: bool) -> x509.KeyUsage:
    """A KeyUsage with the bits given set and every other one clear."""
    fields = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
                           False)
    fields.update(kw)
    return x509.KeyUsage(**fields)


def aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def self_signed_ca(key: Any, cn: str, now: dt.datetime) -> x509.Certificate:
    """A demo root: self-signed, CA:TRUE pathlen 0, keyCertSign+cRLSign, backdated, CA_VALIDITY long."""
    subject = name(cn)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def issue_responder_cert(ca_cert: x509.Certificate, ca_key: Any, responder_spki: bytes, cn: str,
                         now: dt.datetime, validity: dt.timedelta = RESPONDER_VALIDITY) -> x509.Certificate:
    """A delegated OCSP responder certificate (RFC 6960 4.2.2.2) for a public key, issued by the CA."""
    public_key = load_der_public_key(responder_spki)
    return (x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki(ca_cert), critical=False)
            .sign(ca_key, hashes.SHA256()))


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The OCSP URL of a certificate's authorityInfoAccess, if any."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP:
            return desc.access_location.value
    return None


def issue_leaf(ca_cert: x509.Certificate, ca_key: Any, cn: str, url: str, now: dt.datetime) -> x509.Certificate:
    """A TLS client leaf whose authorityInfoAccess names the OCSP responder at ``url``."""
    key = ec.generate_private_key(ec.SECP256R1())  # thrown away: only the certificate matters here
    return (x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]),
                critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki(ca_cert), critical=False)
            .sign(ca_key, hashes.SHA256()))
