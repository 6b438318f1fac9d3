"""Build OCSP responses (RFC 6960 4.2, RFC 9919 profile) from typed values.

``build_response_data`` is on the signing hot path, so it writes DER directly with a few precomputed
pieces instead of building an asn1crypto tree (which costs tens of times more). The DER it writes is
checked against asn1crypto and cryptography in tests/unit/shared/test_response.py. The signature is made
elsewhere (in the token); ``signed_response`` only wraps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from asn1crypto import algos, core, ocsp, x509

from shared.ocsp.types import (
    DIGEST_SIZES,
    CertStatus,
    HashAlgorithm,
    ResponseStatus,
    RevocationReason,
    SingleStatus,
)

__all__ = [
    "EPOCH",
    "ERROR_RESPONSES",
    "ResponseTemplate",
    "build_response_data",
    "error_response",
    "responder_id",
    "signed_response",
]

ID_PKIX_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
ID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
ID_PKIX_OCSP_EXTENDED_REVOKE = "1.3.6.1.5.5.7.48.1.9"
ID_CE_INVALIDITY_DATE = "2.5.29.24"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- DER primitives -------------------------------------------------------------------------------
def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def _header(tag: int, n: int) -> bytes:
    """Tag and length octets of an element of ``n`` content octets."""
    if n < 0x80:
        return bytes((tag, n))
    return bytes((tag,)) + _length(n)


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + _length(n) + content


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


_SEQ = 0x30
_OCTET_STRING = 0x04
_INTEGER = 0x02
_BIT_STRING = 0x03
_BOOLEAN_TRUE = b"\x01\x01\xff"
_NULL = b"\x05\x00"


def _time(dt: datetime) -> bytes:
    """GeneralizedTime, whole seconds (microseconds dropped), UTC, 'Z'. A response's times repeat
    (producedAt within a second, thisUpdate/nextUpdate of one status data generation), so the
    encodings are kept in a small cache; a naive datetime is never cached (it raises)."""
    der = _TIMES.get(dt)
    if der is None:
        der = _encode_time(dt)
        if len(_TIMES) >= _MAX_TIMES:
            _TIMES.clear()
        _TIMES[dt] = der
    return der


def _encode_time(dt: datetime) -> bytes:
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {dt!r}: times must be aware (UTC)")
    if offset:
        dt = dt.astimezone(UTC)
    text = (f"{dt.year:04d}{dt.month:02d}{dt.day:02d}"
            f"{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z").encode("ascii")
    return b"\x18\x0f" + text


# Aware datetimes that are equal are the same instant, so one key gives one encoding whatever the zone.
_TIMES: dict[datetime, bytes] = {}
_MAX_TIMES = 4096


# AlgorithmIdentifier of each CertID hash, parameters NULL (echoed that way whatever the request had).
_HASH_ALGORITHM_DER: dict[HashAlgorithm, bytes] = {
    alg: algos.DigestAlgorithm({"algorithm": alg.value, "parameters": None}).dump() for alg in HashAlgorithm
}

_GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
_UNKNOWN = b"\x82\x00"  # [2] IMPLICIT UnknownInfo (NULL)
# revocationReason [0] EXPLICIT CRLReason (ENUMERATED)
_REASON_DER = {r: b"\xa0\x03\x0a\x01" + bytes((int(r),)) for r in RevocationReason}

_NONCE_OID = _oid(ID_PKIX_OCSP_NONCE)
_INVALIDITY_DATE_OID = _oid(ID_CE_INVALIDITY_DATE)
# Extension { id-pkix-ocsp-extended-revoke, extnValue = DER NULL } (non-critical: critical omitted)
_EXTENDED_REVOKE_EXT = _tlv(_SEQ, _oid(ID_PKIX_OCSP_EXTENDED_REVOKE) + _tlv(_OCTET_STRING, _NULL))


def _is_extended_revoke(s: SingleStatus) -> bool:
    r = s.revocation
    return (s.status is CertStatus.REVOKED and r is not None and r.reason == RevocationReason.CERTIFICATE_HOLD
            and r.time.utcoffset() is not None and r.time.replace(microsecond=0) == EPOCH)


# Per CertID hash: (digest size, AlgorithmIdentifier DER + the OCTET STRING header of issuerNameHash,
# the OCTET STRING header of issuerKeyHash); digests are shorter than 128 octets (short-form lengths).
_CERT_ID_PIECES: dict[HashAlgorithm, tuple[int, bytes, bytes]] = {
    alg: (DIGEST_SIZES[alg], _HASH_ALGORITHM_DER[alg] + bytes((_OCTET_STRING, DIGEST_SIZES[alg])),
          bytes((_OCTET_STRING, DIGEST_SIZES[alg]))) for alg in HashAlgorithm
}
_NEXT_UPDATE = b"\xa0\x11"  # nextUpdate [0] EXPLICIT around a 17-octet GeneralizedTime


def _single_response(s: SingleStatus) -> bytes:
    cid = s.cert_id
    size, alg_and_name, key_header = _CERT_ID_PIECES[cid.hash_algorithm]
    name_hash, key_hash, serial = cid.issuer_name_hash, cid.issuer_key_hash, cid.serial
    if len(name_hash) != size or len(key_hash) != size or not serial:
        raise ValueError(f"malformed CertId {cid!r}")
    cert_id = _tlv(_SEQ, b"".join((alg_and_name, name_hash, key_header, key_hash,
                                   _tlv(_INTEGER, serial))))  # the serial byte-exact, as requested
    extensions = b""
    status = s.status
    if status is CertStatus.GOOD:
        if s.revocation is not None:
            raise ValueError("a good status carries no revocation")
        info = _GOOD
    elif status is CertStatus.UNKNOWN:
        if s.revocation is not None:
            raise ValueError("an unknown status carries no revocation")
        info = _UNKNOWN
    elif status is CertStatus.REVOKED:
        rev = s.revocation
        if rev is None:
            raise ValueError("a revoked status needs a Revocation")
        revoked = _time(rev.time)
        if rev.reason is not None:
            revoked += _REASON_DER[RevocationReason(rev.reason)]
        info = _tlv(0xA1, revoked)  # [1] IMPLICIT RevokedInfo
        if rev.invalidity_date is not None:
            ext = _tlv(_SEQ, _INVALIDITY_DATE_OID + _tlv(_OCTET_STRING, _time(rev.invalidity_date)))
            extensions = _tlv(0xA1, _tlv(_SEQ, ext))  # singleExtensions [1] EXPLICIT Extensions
    else:
        raise ValueError(f"unknown CertStatus {status!r}")
    # nextUpdate [0] EXPLICIT, always present
    return _tlv(_SEQ, b"".join((cert_id, info, _time(s.this_update), _NEXT_UPDATE, _time(s.next_update),
                                extensions)))


def _response_data(responder_id_der: bytes, produced_at: datetime, statuses: Sequence[SingleStatus],
                   nonce: bytes | None) -> bytes:
    if not statuses:
        raise ValueError("a response needs at least one status")
    responses = b"".join([_single_response(s) for s in statuses])
    body = responder_id_der + _time(produced_at) + _tlv(_SEQ, responses)
    exts = b""
    if nonce is not None:
        exts = _tlv(_SEQ, _NONCE_OID + _tlv(_OCTET_STRING, bytes(nonce)))
    if any(_is_extended_revoke(s) for s in statuses if s.revocation is not None):
        exts += _EXTENDED_REVOKE_EXT
    if exts:
        body += _tlv(0xA1, _tlv(_SEQ, exts))  # responseExtensions [1] EXPLICIT
    return _tlv(_SEQ, body)


def build_response_data(*, responder_id: ocsp.ResponderId, produced_at: datetime,
                        statuses: Sequence[SingleStatus], nonce: bytes | None) -> bytes:
    """DER of ResponseData (version omitted: v1). ``nonce`` is the request's raw extnValue, echoed as is.

    Raises ValueError on inconsistent input (the signer's policy checks it before). The signer calls
    ``ResponseTemplate.response_data``, the same encoder with the ResponderID encoded once.
    """
    return _response_data(responder_id.dump(), produced_at, statuses, nonce)


def responder_id(responder_cert_der: bytes, by: str = "key") -> ocsp.ResponderId:
    """ResponderID of a responder certificate: byKey (RFC 9919 default) or byName."""
    try:
        cert = x509.Certificate.load(bytes(responder_cert_der), strict=True)
        tbs = cert["tbs_certificate"]
        if by == "key":
            bits = tbs["subject_public_key_info"]["public_key"].contents
            if not bits or bits[0] != 0:
                raise ValueError("subjectPublicKey BIT STRING has unused bits")
            rid = ocsp.ResponderId(name="by_key", value=hashlib.sha1(bits[1:]).digest())
        elif by == "name":
            rid = ocsp.ResponderId(name="by_name", value=x509.Name.load(tbs["subject"].dump()))
        else:
            raise ValueError(f"responder_id must be 'key' or 'name', not {by!r}")
        rid.dump()  # encode once now; later dumps return the cached bytes
        return rid
    except (TypeError, KeyError) as e:
        raise ValueError(f"not a DER X.509 certificate: {e}") from None


# Signature algorithms we put in responses (never SHA-1, never MD5). PSS would need parameters.
_SIGNATURE_ALGORITHMS = ("sha256_rsa", "sha384_rsa", "sha512_rsa",
                         "sha256_ecdsa", "sha384_ecdsa", "sha512_ecdsa", "ed25519", "ed448")
_SIGNATURE_ALGORITHM_DER = {name: algos.SignedDigestAlgorithm({"algorithm": name}).dump()
                            for name in _SIGNATURE_ALGORITHMS}
# responseBytes [0] EXPLICIT ResponseBytes prefix pieces
_BASIC_OID = _oid(ID_PKIX_OCSP_BASIC)
_SUCCESSFUL = b"\x0a\x01\x00"


def signed_response(tbs_der: bytes, algorithm: str, signature: bytes, certs: Sequence[bytes]) -> bytes:
    """The whole DER OCSPResponse (successful, id-pkix-ocsp-basic) around a finished signature.

    ``tbs_der`` is what ``build_response_data`` returned and what was signed; ``algorithm`` is an
    asn1crypto SignedDigestAlgorithmId name (``sha256_rsa``, ``sha256_ecdsa``, ``sha384_ecdsa``...);
    ``signature`` is the signature value (DER ECDSA-Sig-Value for ECDSA); ``certs`` are DER
    certificates for BasicOCSPResponse.certs, in order (may be empty).
    """
    return _signed(tbs_der, _signature_algorithm(algorithm), signature, _certs_field(certs))


def _signature_algorithm(algorithm: str) -> bytes:
    alg = _SIGNATURE_ALGORITHM_DER.get(algorithm)
    if alg is None:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}")
    return alg


def _certs_field(certs: Sequence[bytes]) -> bytes:
    """BasicOCSPResponse.certs, [0] EXPLICIT SEQUENCE OF Certificate; nothing when there are none."""
    return _tlv(0xA0, _tlv(_SEQ, b"".join(bytes(c) for c in certs))) if certs else b""


def _signed(tbs_der: bytes, algorithm_der: bytes, signature: bytes, certs_der: bytes) -> bytes:
    """OCSPResponse { successful, [0] EXPLICIT ResponseBytes { id-pkix-ocsp-basic, OCTET STRING {
    BasicOCSPResponse { tbs, algorithm, BIT STRING signature, certs } } } }: the headers computed from
    the lengths, the parts joined once."""
    signature_header = _header(_BIT_STRING, len(signature) + 1) + b"\x00"
    n = len(tbs_der) + len(algorithm_der) + len(signature_header) + len(signature) + len(certs_der)
    basic = _header(_SEQ, n)
    n += len(basic)
    octets = _header(_OCTET_STRING, n)
    n += len(octets) + len(_BASIC_OID)
    response_bytes = _header(_SEQ, n)
    n += len(response_bytes)
    explicit = _header(0xA0, n)
    n += len(explicit) + len(_SUCCESSFUL)
    return b"".join((_header(_SEQ, n), _SUCCESSFUL, explicit, response_bytes, _BASIC_OID, octets, basic,
                     tbs_der, algorithm_der, signature_header, signature, certs_der))


@dataclass(frozen=True, slots=True, eq=False)
class ResponseTemplate:
    """What every response of one responder shares, encoded once (the signer keeps one per responder):
    the ResponderID, the signature AlgorithmIdentifier and BasicOCSPResponse.certs. Its two methods
    give the bytes ``build_response_data`` and ``signed_response`` give for the same arguments."""

    responder_id: bytes  # DER ResponderID
    algorithm: bytes  # DER AlgorithmIdentifier of the signature
    certs: bytes  # DER of the certs field, b"" without certificates

    @classmethod
    def of(cls, responder_id: ocsp.ResponderId, algorithm: str, certs: Sequence[bytes]) -> ResponseTemplate:
        """ValueError for an algorithm ``signed_response`` refuses."""
        return cls(responder_id.dump(), _signature_algorithm(algorithm), _certs_field(certs))

    def response_data(self, produced_at: datetime, statuses: Sequence[SingleStatus], nonce: bytes | None) -> bytes:
        """``build_response_data`` with this responder's ResponderID."""
        return _response_data(self.responder_id, produced_at, statuses, nonce)

    def signed(self, tbs_der: bytes, signature: bytes) -> bytes:
        """``signed_response`` with this responder's algorithm and certificates."""
        return _signed(tbs_der, self.algorithm, signature, self.certs)


# Unsigned error responses: OCSPResponse { responseStatus } with no responseBytes.
ERROR_RESPONSES: dict[ResponseStatus, bytes] = {
    status: _tlv(_SEQ, b"\x0a\x01" + bytes((int(status),)))
    for status in ResponseStatus if status is not ResponseStatus.SUCCESSFUL
}


def error_response(status: ResponseStatus) -> bytes:
    """The precomputed unsigned OCSPResponse for an error status."""
    try:
        return ERROR_RESPONSES[ResponseStatus(status)]
    except (KeyError, ValueError):
        raise ValueError(f"no error response for {status!r}") from None
