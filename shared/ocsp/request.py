"""Decode an OCSPRequest (RFC 6960 4.1) into a ``ParsedRequest``: eager, strict, bounded.

asn1crypto parses lazily, so every field the responder needs is read inside the one ``try`` of
``decode_request_general``; whatever goes wrong there becomes ``MalformedRequest`` with a short reason.
requestorName and optionalSignature are accepted and not looked into.

``decode_request`` first tries ``decode_request_fast`` (``fast_request.decode_common``, a hand-written
decoder of the common request: one CertID, an optional nonce), which accepts only what the general
decoder here, ``decode_request_general``, accepts with the same result; for anything else the
general one decides.
"""

from __future__ import annotations

from asn1crypto import core, ocsp, x509

from shared.ocsp.certid import serial_problem
from shared.ocsp.errors import MalformedRequest
from shared.ocsp.fast_request import decode_common
from shared.ocsp.types import DIGEST_SIZES, CertId, HashAlgorithm, ParsedRequest

__all__ = ["MAX_NONCE", "MIN_NONCE", "decode_request", "decode_request_fast", "decode_request_general",
           "nonce_length"]

MIN_NONCE = 1  # RFC 9654 2.1
MAX_NONCE = 128

ID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
ID_PKIX_OCSP_RESPONSE = "1.3.6.1.5.5.7.48.1.4"  # acceptable responses: we always answer basic

# Request extensions we understand and may therefore accept when marked critical.
_UNDERSTOOD_REQUEST_EXTENSIONS = frozenset({ID_PKIX_OCSP_NONCE, ID_PKIX_OCSP_RESPONSE})
# singleRequestExtensions: none understood (service locator is not supported).
_UNDERSTOOD_SINGLE_EXTENSIONS: frozenset[str] = frozenset()

_HASHES: dict[str, HashAlgorithm] = {
    "1.3.14.3.2.26": HashAlgorithm.SHA1,
    "2.16.840.1.101.3.4.2.1": HashAlgorithm.SHA256,
    "2.16.840.1.101.3.4.2.2": HashAlgorithm.SHA384,
    "2.16.840.1.101.3.4.2.3": HashAlgorithm.SHA512,
}

_NULL = b"\x05\x00"


# The request schema (RFC 6960 4.1.1), declared here rather than taken from asn1crypto.ocsp so that
# (a) extnValue stays opaque octets (asn1crypto would parse a nonce's extnValue as an OCTET STRING
# and fail on legacy clients' raw nonces), and (b) requestorName and optionalSignature, which we
# ignore, are never parsed beyond their tags.
class _Extension(core.Sequence):
    _fields = [  # noqa: RUF012 - asn1crypto reads its schema from this class attribute
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString),
    ]


class _Extensions(core.SequenceOf):
    _child_spec = _Extension


class _Request(core.Sequence):
    _fields = [  # noqa: RUF012 - asn1crypto reads its schema from this class attribute
        ("req_cert", ocsp.CertId),
        ("single_request_extensions", _Extensions, {"explicit": 0, "optional": True}),
    ]


class _Requests(core.SequenceOf):
    _child_spec = _Request


class _TBSRequest(core.Sequence):
    _fields = [  # noqa: RUF012 - asn1crypto reads its schema from this class attribute
        ("version", ocsp.Version, {"explicit": 0, "default": "v1"}),
        ("requestor_name", x509.GeneralName, {"explicit": 1, "optional": True}),
        ("request_list", _Requests),
        ("request_extensions", _Extensions, {"explicit": 2, "optional": True}),
    ]


class _OCSPRequest(core.Sequence):
    _fields = [  # noqa: RUF012 - asn1crypto reads its schema from this class attribute
        ("tbs_request", _TBSRequest),
        ("optional_signature", ocsp.Signature, {"explicit": 0, "optional": True}),
    ]


def nonce_length(extn_value: bytes) -> int:
    """Length of the nonce carried by a nonce extension's extnValue (RFC 9654).

    When ``extn_value`` is a single DER OCTET STRING, its contents are the nonce; otherwise (legacy
    clients that put the raw nonce in extnValue) the whole value is. Never raises; the caller checks
    the result against ``MIN_NONCE..MAX_NONCE``.
    """
    contents = _der_octet_string_contents(extn_value)
    return len(extn_value) if contents is None else contents


def _der_octet_string_contents(value: bytes) -> int | None:
    """Length of the contents if ``value`` is exactly one DER-encoded primitive OCTET STRING."""
    n = len(value)
    if n < 2 or value[0] != 0x04:
        return None
    first = value[1]
    if first < 0x80:
        length, header = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or n < 2 + count:
            return None  # indefinite form (not DER) or absurdly long
        length_octets = value[2:2 + count]
        if length_octets[0] == 0:
            return None  # not minimal
        length = int.from_bytes(length_octets, "big")
        if length < 0x80 or (count > 1 and length < 1 << (8 * (count - 1))):
            return None  # not minimal
        header = 2 + count
    return length if header + length == n else None


def _exact(seq: core.Sequence) -> None:
    """asn1crypto keeps elements past the last defined field; DER allows none."""
    if len(seq) != len(type(seq)._fields):
        raise MalformedRequest(f"unexpected elements in {type(seq).__name__.lstrip('_')}")


def _check_extensions(extensions: core.SequenceOf, understood: frozenset[str],
                      where: str) -> dict[str, bytes]:
    """Return {extnID: raw extnValue}; reject duplicates and critical ones we do not understand."""
    seen: dict[str, bytes] = {}
    for ext in extensions:
        _exact(ext)
        oid = ext["extn_id"].dotted
        if oid in seen:
            raise MalformedRequest(f"duplicate {where} extension {oid}")
        if ext["critical"].native and oid not in understood:
            raise MalformedRequest(f"unsupported critical {where} extension {oid}")
        # Raw octets of extnValue, untouched: never ask asn1crypto to interpret it.
        seen[oid] = ext["extn_value"].contents
    return seen


def _cert_id(cid: ocsp.CertId) -> CertId:
    _exact(cid)
    alg = cid["hash_algorithm"]
    _exact(alg)
    algorithm = _HASHES.get(alg["algorithm"].dotted)
    if algorithm is None:
        raise MalformedRequest(f"unsupported CertID hash algorithm {alg['algorithm'].dotted}")
    size = DIGEST_SIZES[algorithm]
    params = alg["parameters"]
    if not isinstance(params, core.Void) and params.dump() != _NULL:
        raise MalformedRequest("CertID hash algorithm parameters must be absent or NULL")
    name_hash = cid["issuer_name_hash"].native
    key_hash = cid["issuer_key_hash"].native
    if len(name_hash) != size or len(key_hash) != size:
        raise MalformedRequest(f"CertID hash length is not the {algorithm.value} digest size")
    serial = cid["serial_number"].contents
    problem = serial_problem(serial)
    if problem is not None:
        raise MalformedRequest(f"CertID {problem}")
    return CertId(algorithm, name_hash, key_hash, serial)


def decode_request(der: bytes, *, max_cert_ids: int = 64) -> ParsedRequest:
    """Decode a DER OCSPRequest. Raises ``MalformedRequest`` for anything we will not answer."""
    parsed = decode_request_fast(der, max_cert_ids=max_cert_ids)
    return decode_request_general(der, max_cert_ids=max_cert_ids) if parsed is None else parsed


def decode_request_fast(der: bytes, *, max_cert_ids: int = 64) -> ParsedRequest | None:
    """The fast path: what ``decode_request_general`` returns for a common request, or None when that
    decoder must decide (another shape, not DER, or something it refuses). Never raises."""
    if not isinstance(der, (bytes, bytearray, memoryview)) or not isinstance(max_cert_ids, int) \
            or max_cert_ids < 1:
        return None
    parsed = decode_common(bytes(der))
    if parsed is None or (parsed.nonce is not None
                          and not MIN_NONCE <= nonce_length(parsed.nonce) <= MAX_NONCE):
        return None
    return parsed


def decode_request_general(der: bytes, *, max_cert_ids: int = 64) -> ParsedRequest:
    """Decode any DER OCSPRequest with asn1crypto. Raises ``MalformedRequest`` for anything we will
    not answer."""
    try:
        req = _OCSPRequest.load(bytes(der), strict=True)
        _exact(req)
        tbs = req["tbs_request"]
        _exact(tbs)
        if tbs["version"].native != "v1":
            raise MalformedRequest("unsupported request version")
        request_list = tbs["request_list"]
        count = len(request_list)
        if count == 0:
            raise MalformedRequest("empty requestList")
        if count > max_cert_ids:
            raise MalformedRequest(f"requestList has {count} entries; at most {max_cert_ids} allowed")
        cert_ids = []
        for single in request_list:
            _exact(single)
            cert_ids.append(_cert_id(single["req_cert"]))
            single_exts = single["single_request_extensions"]
            if not isinstance(single_exts, core.Void):
                _check_extensions(single_exts, _UNDERSTOOD_SINGLE_EXTENSIONS, "singleRequest")
        nonce: bytes | None = None
        exts = tbs["request_extensions"]
        if not isinstance(exts, core.Void):
            values = _check_extensions(exts, _UNDERSTOOD_REQUEST_EXTENSIONS, "request")
            nonce = values.get(ID_PKIX_OCSP_NONCE)
            if nonce is not None and not MIN_NONCE <= nonce_length(nonce) <= MAX_NONCE:
                raise MalformedRequest(f"nonce must be {MIN_NONCE}..{MAX_NONCE} octets (RFC 9654)")
        req["optional_signature"]  # its tag only: accepted and ignored
    except MalformedRequest:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            UnicodeDecodeError, RecursionError) as e:
        raise MalformedRequest(f"not a DER OCSPRequest: {type(e).__name__}") from None
    return ParsedRequest(tuple(cert_ids), nonce)
