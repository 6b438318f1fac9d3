"""Issuer hashes as a CertID carries them (RFC 6960 4.1.1), and an index keyed by them.

issuerNameHash is the hash of the DER subject of the issuer certificate, byte-exact as encoded there;
issuerKeyHash is the hash of the value of its subjectPublicKey BIT STRING (without the unused-bits
octet, tag and length).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from asn1crypto import x509

from shared.ocsp.types import CertId, HashAlgorithm, IssuerKey

__all__ = ["MAX_SERIAL_VALUE_OCTETS", "IssuerIndex", "cert_id_for", "issuer_keys", "serial_problem"]

# RFC 5280 4.1.2.2: conforming CAs use serial numbers of at most 20 octets. A positive value of 20
# octets with its top bit set takes a 0x00 sign octet in DER, so the INTEGER contents may be 21.
MAX_SERIAL_VALUE_OCTETS = 20

T = TypeVar("T")


def serial_problem(serial: bytes) -> str | None:
    """Why ``serial`` (INTEGER content octets, as a CertID carries them) cannot be answered, or None.

    Refused: empty; longer than RFC 5280 allows (a certificate no conforming CA issued, and every
    octet of it would be echoed into a signed answer and its audit record); not minimally encoded
    (echoing it would make the signed ResponseData non-DER, which clients reject)."""
    if not serial:
        return "empty serialNumber"
    value = serial[1:] if len(serial) > 1 and serial[0] == 0 else serial
    if len(value) > MAX_SERIAL_VALUE_OCTETS:
        return (f"serialNumber of {len(value)} octets; RFC 5280 allows at most "
                f"{MAX_SERIAL_VALUE_OCTETS}")
    if len(serial) > 1 and ((serial[0] == 0 and serial[1] < 0x80) or (serial[0] == 0xFF and serial[1] >= 0x80)):
        return "serialNumber is not minimally encoded (not DER)"
    return None


def _load(cert_der: bytes) -> x509.Certificate:
    try:
        cert = x509.Certificate.load(bytes(cert_der), strict=True)
        cert["tbs_certificate"]["subject_public_key_info"]["public_key"]
        return cert
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a DER X.509 certificate: {e}") from None


def _name_and_key(cert: x509.Certificate) -> tuple[bytes, bytes]:
    tbs = cert["tbs_certificate"]
    subject = tbs["subject"].dump()  # original encoding: asn1crypto re-dumps only if modified
    bits = tbs["subject_public_key_info"]["public_key"].contents
    if not bits or bits[0] != 0:
        raise ValueError("subjectPublicKey BIT STRING has unused bits")
    return subject, bits[1:]


def issuer_keys(issuer_cert_der: bytes) -> dict[HashAlgorithm, IssuerKey]:
    """The IssuerKey of ``issuer_cert_der`` under every supported hash algorithm."""
    subject, key = _name_and_key(_load(issuer_cert_der))
    return {
        alg: IssuerKey(alg, hashlib.new(alg.value, subject).digest(), hashlib.new(alg.value, key).digest())
        for alg in HashAlgorithm
    }


def cert_id_for(cert_der: bytes, issuer_cert_der: bytes,
                algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> CertId:
    """The CertID a client would send for ``cert_der`` issued by ``issuer_cert_der``."""
    serial = _load(cert_der)["tbs_certificate"]["serial_number"].contents
    key = issuer_keys(issuer_cert_der)[algorithm]
    return CertId(algorithm, key.issuer_name_hash, key.issuer_key_hash, serial)


class IssuerIndex(Generic[T]):
    """Maps the IssuerKey of a CertID (any supported algorithm) to a value, in one dict lookup."""

    __slots__ = ("_by_key", "_values")

    def __init__(self) -> None:
        self._by_key: dict[IssuerKey, T] = {}
        self._values: list[T] = []

    def add(self, issuer_cert_der: bytes, value: T) -> None:
        """Index ``value`` under ``issuer_cert_der``'s keys for all algorithms.

        Raises ValueError if that issuer (same subject and key) is already indexed: two entries for
        one issuer would make the answer depend on configuration order.
        """
        keys = issuer_keys(issuer_cert_der)
        if any(k in self._by_key for k in keys.values()):
            raise ValueError("issuer already indexed (same subject and public key)")
        for k in keys.values():
            self._by_key[k] = value
        self._values.append(value)

    def get(self, key: IssuerKey) -> T | None:
        return self._by_key.get(key)

    def values(self) -> list[T]:
        """Values in the order they were added, one per ``add``."""
        return list(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[T]:
        return iter(self._values)
