"""What a fuzz input must satisfy, target by target: one function per target that takes the input
bytes and raises ``Finding`` (or lets any foreign exception escape) when the code under test did
something it must not. Plain Python: the atheris driver (fuzz.run) and the replay test
(tests/fuzz/test_fuzz_vectors.py) call the same functions.

- ``decode``: the request decoders, differentially. ``decode_request`` (fast path first) and the
  general asn1crypto decoder give the same ParsedRequest or the same OCSPError (type and message);
  whenever the fast path accepts, the general decoder accepts with an equal result of plain bytes; an
  accepted request obeys the limits (1..64 CertIDs, serials 1..64 octets, nonce 1..128 octets).
- ``get_path``: ``origin_form`` + ``request_from_path`` on the input as a request target returns one
  complete DER SEQUENCE within max_bytes or raises MalformedRequest; and the input, base64-encoded in
  one of the spellings clients use (standard or URL-safe alphabet, padding or not, percent-encoded or
  not) under the prefix, comes back byte-exact whenever it is one DER SEQUENCE within the limit.
- ``http``: see fuzz.http_harness.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from urllib.parse import quote_from_bytes

from shared.ocsp import http as ohttp
from shared.ocsp.errors import MalformedRequest, OCSPError
from shared.ocsp.request import (
    MAX_NONCE,
    MIN_NONCE,
    decode_request,
    decode_request_fast,
    decode_request_general,
    nonce_length,
)
from shared.ocsp.types import ParsedRequest


class Finding(AssertionError):
    """The code under test broke a rule on this input (a wrong result, not an allowed refusal)."""


def _outcome(decode: Callable[..., ParsedRequest], der: bytes, max_cert_ids: int) -> object:
    try:
        return decode(der, max_cert_ids=max_cert_ids)
    except OCSPError as e:  # the documented refusals; anything else escapes: a finding
        return type(e).__name__, str(e)


def check_decode(data: bytes) -> None:
    # The first byte picks the requestList limit sometimes (0 -> 1, 1 -> 2): the limit's edge is cheap
    # to reach, the default covers the rest.
    max_cert_ids = {0: 1, 1: 2}.get(data[0] % 16, 64) if data else 64
    general = _outcome(decode_request_general, data, max_cert_ids)
    combined = _outcome(decode_request, data, max_cert_ids)
    if combined != general:
        raise Finding(f"decode_request {combined!r} != general decoder {general!r}")
    fast = decode_request_fast(data, max_cert_ids=max_cert_ids)
    if fast is not None:
        if fast != general:
            raise Finding(f"fast path {fast!r} != general decoder {general!r}")
        if len(fast.cert_ids) != 1:
            raise Finding(f"fast path returned {len(fast.cert_ids)} CertIDs")
    if not isinstance(general, ParsedRequest):
        return
    if not 1 <= len(general.cert_ids) <= max_cert_ids:
        raise Finding(f"{len(general.cert_ids)} CertIDs accepted with max_cert_ids={max_cert_ids}")
    for parsed in (general, fast):
        if parsed is None:
            continue
        for cid in parsed.cert_ids:
            for value in (cid.issuer_name_hash, cid.issuer_key_hash, cid.serial):
                if type(value) is not bytes:
                    raise Finding(f"CertID field of type {type(value).__name__}")
            if len(cid.issuer_name_hash) != cid.hash_algorithm.digest_size or \
                    len(cid.issuer_key_hash) != cid.hash_algorithm.digest_size:
                raise Finding(f"hash length is not the {cid.hash_algorithm.name} digest size")
            if not 1 <= len(cid.serial) <= 64:
                raise Finding(f"serial of {len(cid.serial)} octets accepted")
            hash(cid)
        if parsed.nonce is not None:
            if type(parsed.nonce) is not bytes:
                raise Finding(f"nonce of type {type(parsed.nonce).__name__}")
            if not MIN_NONCE <= nonce_length(parsed.nonce) <= MAX_NONCE:
                raise Finding(f"nonce of {nonce_length(parsed.nonce)} octets accepted")


def one_sequence(der: bytes) -> bool:
    """True when ``der`` is exactly one SEQUENCE by its tag and length (short form, or long form of
    1..4 octets), written here apart from shared.ocsp.http so the check does not trust what it checks."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        return len(der) == 2 + der[1]
    n = der[1] - 0x80
    return 1 <= n <= 4 and len(der) >= 2 + n and len(der) == 2 + n + int.from_bytes(der[2:2 + n], "big")


# (prefix, max_bytes) the GET check uses, picked by the input's length so one input is one case.
GET_SETTINGS = (("/", 10000), ("/ocsp/", 10000), ("/", 100), ("/a/b/", 1000))


def spelt(der: bytes, variant: int) -> bytes:
    """``der`` base64-encoded the way one kind of client writes it into a GET path."""
    text = base64.urlsafe_b64encode(der) if variant & 1 else base64.b64encode(der)
    if variant & 2:
        text = text.rstrip(b"=")
    if variant & 4:
        text = quote_from_bytes(text, safe="").encode()  # '+', '/', '=' percent-encoded
    if variant & 8:
        text += b"?x=1"  # a query string is not part of the request
    return text


def check_get_path(data: bytes) -> None:
    prefix, max_bytes = GET_SETTINGS[len(data) % len(GET_SETTINGS)]
    target = ohttp.origin_form(data)
    if not isinstance(target, bytes):
        raise Finding(f"origin_form returned {type(target).__name__}")
    try:
        der = ohttp.request_from_path(target, prefix, max_bytes=max_bytes)
    except MalformedRequest:
        pass
    else:
        if type(der) is not bytes or not one_sequence(der) or len(der) > max_bytes:
            raise Finding(f"request_from_path returned {len(der)} bytes that are not one DER SEQUENCE "
                          f"within {max_bytes}")
    # The round trip: the input as the request a client sends.
    variant = hashlib.sha1(data).digest()[0] % 16
    path = prefix.encode() + spelt(data, variant)
    try:
        back = ohttp.request_from_path(path, prefix, max_bytes=max_bytes)
    except MalformedRequest as e:
        if one_sequence(data) and len(data) <= max_bytes and len(path) <= ohttp.MAX_PATH_CHARS:
            raise Finding(f"a DER SEQUENCE spelt as variant {variant} refused: {e}") from None
        return
    if back != data and one_sequence(data) and len(data) <= max_bytes:
        raise Finding(f"variant {variant} decoded to other bytes")
