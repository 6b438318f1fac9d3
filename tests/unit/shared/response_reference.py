"""The hand-written encoder of shared/ocsp/response.py as it was before its per-responder templates
(commit 6c9ed90), kept verbatim as the reference the fast path is compared with
(test_response_fast.py): the bytes of every response must stay the same."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from asn1crypto import algos, core, ocsp

from shared.ocsp.types import DIGEST_SIZES, CertStatus, HashAlgorithm, RevocationReason, SingleStatus

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


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


_SEQ = 0x30
_OCTET_STRING = 0x04
_INTEGER = 0x02
_BIT_STRING = 0x03
_BOOLEAN_TRUE = b"\x01\x01\xff"
_NULL = b"\x05\x00"


def _time(dt: datetime) -> bytes:
    """GeneralizedTime, whole seconds (microseconds dropped), UTC, 'Z'."""
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {dt!r}: times must be aware (UTC)")
    if offset:
        dt = dt.astimezone(UTC)
    text = (f"{dt.year:04d}{dt.month:02d}{dt.day:02d}"
            f"{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z").encode("ascii")
    return b"\x18\x0f" + text


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


def _single_response(s: SingleStatus) -> bytes:
    cid = s.cert_id
    size = DIGEST_SIZES[cid.hash_algorithm]
    if len(cid.issuer_name_hash) != size or len(cid.issuer_key_hash) != size or not cid.serial:
        raise ValueError(f"malformed CertId {cid!r}")
    cert_id = _tlv(_SEQ, _HASH_ALGORITHM_DER[cid.hash_algorithm]
                   + _tlv(_OCTET_STRING, cid.issuer_name_hash)
                   + _tlv(_OCTET_STRING, cid.issuer_key_hash)
                   + _tlv(_INTEGER, cid.serial))  # byte-exact, as requested
    extensions = b""
    if s.status is CertStatus.GOOD:
        if s.revocation is not None:
            raise ValueError("a good status carries no revocation")
        status = _GOOD
    elif s.status is CertStatus.UNKNOWN:
        if s.revocation is not None:
            raise ValueError("an unknown status carries no revocation")
        status = _UNKNOWN
    elif s.status is CertStatus.REVOKED:
        rev = s.revocation
        if rev is None:
            raise ValueError("a revoked status needs a Revocation")
        info = _time(rev.time)
        if rev.reason is not None:
            info += _REASON_DER[RevocationReason(rev.reason)]
        status = _tlv(0xA1, info)  # [1] IMPLICIT RevokedInfo
        if rev.invalidity_date is not None:
            ext = _tlv(_SEQ, _INVALIDITY_DATE_OID + _tlv(_OCTET_STRING, _time(rev.invalidity_date)))
            extensions = _tlv(0xA1, _tlv(_SEQ, ext))  # singleExtensions [1] EXPLICIT Extensions
    else:
        raise ValueError(f"unknown CertStatus {s.status!r}")
    return _tlv(_SEQ, cert_id + status + _time(s.this_update)
                + _tlv(0xA0, _time(s.next_update))  # nextUpdate [0] EXPLICIT, always present
                + extensions)


def build_response_data(*, responder_id: ocsp.ResponderId, produced_at: datetime,
                        statuses: Sequence[SingleStatus], nonce: bytes | None) -> bytes:
    """DER of ResponseData (version omitted: v1). ``nonce`` is the request's raw extnValue, echoed as is.

    Raises ValueError on inconsistent input (the signer's policy checks it before).
    """
    if not statuses:
        raise ValueError("a response needs at least one status")
    responses = b"".join([_single_response(s) for s in statuses])
    exts = []
    if nonce is not None:
        exts.append(_tlv(_SEQ, _NONCE_OID + _tlv(_OCTET_STRING, bytes(nonce))))
    if any(_is_extended_revoke(s) for s in statuses):
        exts.append(_EXTENDED_REVOKE_EXT)
    body = responder_id.dump() + _time(produced_at) + _tlv(_SEQ, responses)
    if exts:
        body += _tlv(0xA1, _tlv(_SEQ, b"".join(exts)))  # responseExtensions [1] EXPLICIT
    return _tlv(_SEQ, body)


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
    alg = _SIGNATURE_ALGORITHM_DER.get(algorithm)
    if alg is None:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}")
    basic = bytes(tbs_der) + alg + _tlv(_BIT_STRING, b"\x00" + bytes(signature))
    if certs:
        basic += _tlv(0xA0, _tlv(_SEQ, b"".join(bytes(c) for c in certs)))
    response_bytes = _tlv(_SEQ, _BASIC_OID + _tlv(_OCTET_STRING, _tlv(_SEQ, basic)))
    return _tlv(_SEQ, _SUCCESSFUL + _tlv(0xA0, response_bytes))
