"""Values that cross module boundaries. Frozen, slotted, hashable."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class HashAlgorithm(enum.Enum):
    """CertID hash algorithms we accept. Values are asn1crypto DigestAlgorithmId names."""

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        """Octets of a digest (the length of a CertID's issuerNameHash and issuerKeyHash)."""
        return DIGEST_SIZES[self]


DIGEST_SIZES: dict[HashAlgorithm, int] = {HashAlgorithm.SHA1: 20, HashAlgorithm.SHA256: 32,
                                          HashAlgorithm.SHA384: 48, HashAlgorithm.SHA512: 64}


class ResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 4.2.1)."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class RevocationReason(enum.IntEnum):
    """CRLReason (RFC 5280 5.3.1). 7 is not used."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10


@dataclass(frozen=True, slots=True)
class CertId:
    """An OCSP CertID. serial is the INTEGER content octets, byte-exact as requested."""

    hash_algorithm: HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: bytes

    @property
    def serial_int(self) -> int:
        return int.from_bytes(self.serial, "big", signed=True)


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """Identifies an issuer the way a CertID does (without the serial)."""

    hash_algorithm: HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes

    @classmethod
    def of(cls, cert_id: CertId) -> IssuerKey:
        return cls(cert_id.hash_algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash)


@dataclass(frozen=True, slots=True)
class Revocation:
    time: datetime  # aware, UTC, whole seconds
    reason: RevocationReason | None = None
    invalidity_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What a status source knows about one serial (no CertID, no times of the answer)."""

    status: CertStatus
    revocation: Revocation | None = None  # set iff status is REVOKED


@dataclass(frozen=True, slots=True)
class SingleStatus:
    """One SingleResponse to be signed: a CertID, its status and the validity window."""

    cert_id: CertId
    status: CertStatus
    this_update: datetime  # aware, UTC, whole seconds
    next_update: datetime  # aware, UTC, whole seconds; always present
    revocation: Revocation | None = None  # set iff status is REVOKED


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A decoded OCSPRequest: what the responder needs, nothing it ignores."""

    cert_ids: tuple[CertId, ...]
    # extnValue of the nonce extension (RFC 9654), byte-exact; None when absent.
    nonce: bytes | None = None
