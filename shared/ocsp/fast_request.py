"""A hand-written decoder for the common OCSPRequest, without asn1crypto's generic machinery.

The common request (what openssl, cryptography, Apache and most clients send) is one TBSRequest
with no version (v1) and no requestorName, a requestList of exactly one Request, a CertID with a
SHA-1/SHA-256/SHA-384/SHA-512 AlgorithmIdentifier whose parameters are absent or NULL, no
singleRequestExtensions, no optionalSignature, and optionally requestExtensions with a nonce::

    30 L  OCSPRequest
      30 L  TBSRequest
        30 L  requestList
          30 L  Request
            30 L  CertID
              30 L  06 L <hash OID> [05 00]     hashAlgorithm
              04 L  issuerNameHash
              04 L  issuerKeyHash
              02 L  serialNumber
        A2 L  30 L  (30 L  06 L <OID>  04 L <extnValue>)*     requestExtensions, optional

``decode_common`` accepts only what it is sure ``request.decode_request_general`` accepts with the
same result, and returns None for anything else (other shapes, BER, anything that general decoder
would refuse): then the general decoder decides, so behaviour and error messages stay its own.
The rules it must agree with, and how it stays inside them:

- DER only: definite lengths in their shortest form (at most two length octets), exact identifier
  octets, primitive strings, every element ending exactly where its parent does. The general
  decoder also accepts some BER (indefinite and long-form lengths); those go to it.
- The hash OID is one of four exact encodings; parameters absent or exactly ``05 00``; both hashes
  the digest's size; the serial passes ``certid.serial_problem``.
- Extensions: each is extnID and extnValue only (a critical field sends the request to the general
  decoder); each extnID must be canonically encoded, so that equal octets mean equal OIDs and a
  duplicate is seen; a duplicate goes to the general decoder. Unknown non-critical extensions are
  ignored, as there.
- The nonce's length rule is not applied here: ``decode_request`` checks the nonce this returns
  with ``request.nonce_length`` (the one copy of the rule) and falls back when it fails.

Sans-IO, bytes in, values out; the cost is linear in the length of the request.
"""

from __future__ import annotations

from shared.ocsp.certid import serial_problem
from shared.ocsp.types import DIGEST_SIZES, CertId, HashAlgorithm, ParsedRequest

__all__ = ["HASH_OIDS", "NONCE_OID", "decode_common"]

# OID contents octets (DER) of the CertID hash algorithms; request._HASHES has their dotted forms.
HASH_OIDS: dict[bytes, HashAlgorithm] = {
    bytes.fromhex("2b0e03021a"): HashAlgorithm.SHA1,  # 1.3.14.3.2.26
    bytes.fromhex("608648016503040201"): HashAlgorithm.SHA256,  # 2.16.840.1.101.3.4.2.1
    bytes.fromhex("608648016503040202"): HashAlgorithm.SHA384,  # 2.16.840.1.101.3.4.2.2
    bytes.fromhex("608648016503040203"): HashAlgorithm.SHA512,  # 2.16.840.1.101.3.4.2.3
}
# id-pkix-ocsp-nonce, 1.3.6.1.5.5.7.48.1.2 (request.ID_PKIX_OCSP_NONCE).
NONCE_OID = bytes.fromhex("2b0601050507300102")

_SEQUENCE = 0x30
_OID = 0x06
_OCTET_STRING = 0x04
_INTEGER = 0x02
_REQUEST_EXTENSIONS = 0xA2  # [2] EXPLICIT, constructed
_NULL = b"\x05\x00"


class _NotCommon(Exception):
    """Not the common shape, or not sure: the general decoder decides."""


def decode_common(der: bytes) -> ParsedRequest | None:
    """The ParsedRequest of a common request in DER, or None when the general decoder must decide.

    ``der`` must be ``bytes`` (``decode_request`` converts). Never raises for any input."""
    try:
        return _decode(der)
    except _NotCommon:
        return None


def _element(der: bytes, pos: int, end: int, identifier: int) -> tuple[int, int]:
    """(start, stop) of the contents of the DER element at ``pos`` with identifier octet
    ``identifier``, which must end by ``end``. Lengths of more than two octets, long forms that
    could be shorter and the indefinite form are not the common shape."""
    if pos + 2 > end or der[pos] != identifier:
        raise _NotCommon
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        if length == 0x81:
            if pos >= end:
                raise _NotCommon
            length = der[pos]
            pos += 1
            if length < 0x80:
                raise _NotCommon
        elif length == 0x82:
            if pos + 2 > end:
                raise _NotCommon
            length = der[pos] << 8 | der[pos + 1]
            pos += 2
            if length < 0x100:
                raise _NotCommon
        else:
            raise _NotCommon
    stop = pos + length
    if stop > end:
        raise _NotCommon
    return pos, stop


def _canonical_oid(contents: bytes) -> bool:
    """True if ``contents`` are OID contents octets in DER: not empty, the last subidentifier
    complete, none with a leading 0x80. Two such are equal exactly when the OIDs are."""
    if not contents or contents[-1] & 0x80:
        return False
    starts = True
    for byte in contents:
        if starts and byte == 0x80:
            return False
        starts = byte < 0x80
    return True


def _decode(der: bytes) -> ParsedRequest:
    end = len(der)
    pos, stop = _element(der, 0, end, _SEQUENCE)  # OCSPRequest
    if stop != end:
        raise _NotCommon  # trailing bytes
    pos, tbs_end = _element(der, pos, stop, _SEQUENCE)  # TBSRequest
    if tbs_end != stop:
        raise _NotCommon  # optionalSignature, or more
    pos, list_end = _element(der, pos, tbs_end, _SEQUENCE)  # requestList: no version, requestorName
    pos, request_end = _element(der, pos, list_end, _SEQUENCE)  # the one Request
    if request_end != list_end:
        raise _NotCommon  # more than one Request
    pos, cid_end = _element(der, pos, request_end, _SEQUENCE)  # CertID
    if cid_end != request_end:
        raise _NotCommon  # singleRequestExtensions, or more
    pos, alg_end = _element(der, pos, cid_end, _SEQUENCE)  # hashAlgorithm
    oid_start, oid_end = _element(der, pos, alg_end, _OID)
    algorithm = HASH_OIDS.get(der[oid_start:oid_end])
    if algorithm is None or (oid_end != alg_end and der[oid_end:alg_end] != _NULL):
        raise _NotCommon
    size = DIGEST_SIZES[algorithm]
    pos, stop = _element(der, alg_end, cid_end, _OCTET_STRING)
    if stop - pos != size:
        raise _NotCommon
    name_hash = der[pos:stop]
    pos, stop = _element(der, stop, cid_end, _OCTET_STRING)
    if stop - pos != size:
        raise _NotCommon
    key_hash = der[pos:stop]
    pos, stop = _element(der, stop, cid_end, _INTEGER)
    if stop != cid_end:
        raise _NotCommon
    serial = der[pos:stop]
    if serial_problem(serial) is not None:
        raise _NotCommon
    nonce = None if list_end == tbs_end else _request_extensions(der, list_end, tbs_end)
    return ParsedRequest((CertId(algorithm, name_hash, key_hash, serial),), nonce)


def _request_extensions(der: bytes, pos: int, end: int) -> bytes | None:
    """The nonce's extnValue (or None) of ``[2] EXPLICIT Extensions`` filling ``der[pos:end]``."""
    pos, stop = _element(der, pos, end, _REQUEST_EXTENSIONS)
    if stop != end:
        raise _NotCommon
    pos, end = _element(der, pos, stop, _SEQUENCE)
    if end != stop:
        raise _NotCommon
    nonce = None
    seen: set[bytes] = set()
    while pos < end:
        pos, ext_end = _element(der, pos, end, _SEQUENCE)  # Extension
        oid_start, oid_end = _element(der, pos, ext_end, _OID)
        oid = der[oid_start:oid_end]
        if oid in seen or (oid != NONCE_OID and not _canonical_oid(oid)):
            raise _NotCommon
        seen.add(oid)
        value_start, value_end = _element(der, oid_end, ext_end, _OCTET_STRING)  # no critical field
        if value_end != ext_end:
            raise _NotCommon
        if oid == NONCE_OID:
            nonce = der[value_start:value_end]
        pos = ext_end
    return nonce
