"""Sans-IO HTTP rules of an OCSP responder: GET paths, caching headers, ETags.

No I/O and no clock: times are passed in (whole seconds since the Unix epoch or aware datetimes).

GET (RFC 6960 appendix A.1): ``GET {url}/{url-encoding of base64 encoding of the DER OCSPRequest}``.
``request_from_path`` strips the configured prefix, percent-decodes, accepts the standard and the
URL-safe base64 alphabets, tolerates missing padding, and raises ``MalformedRequest`` for anything it
cannot turn into one complete DER SEQUENCE. ``PathKeys`` remembers the targets that decoded, bounded,
so a repeated GET is one lookup.

Caching (RFC 9919 / RFC 5019 section 6): successful answers without a nonce get
``Cache-Control: max-age=N, public, no-transform, must-revalidate`` (N = seconds until nextUpdate,
capped, never negative), ``Expires`` = nextUpdate, ``Last-Modified`` = thisUpdate, ``ETag`` = quoted hex
SHA-256 of the response, and ``Date``. Everything else (nonce, error responses) is not cacheable.
"""

from __future__ import annotations

import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

from shared.ocsp.errors import MalformedRequest

CACHEABLE_DIRECTIVES = "public, no-transform, must-revalidate"
NOT_CACHEABLE = "no-cache, no-store, must-revalidate"

# A GET path longer than this cannot carry a request we would accept anyway (the server's
# max_request_bytes applies to the decoded DER too); it bounds the work done on a path.
MAX_PATH_CHARS = 64 * 1024

# Where a GET request's base64 may begin: the whole remainder after the prefix, or its tail after one of
# the first MAX_GET_CANDIDATES - 1 slashes. A proxy that forwards its own path (``/ocsp/<base64>``) to a
# responder configured with prefix "/" adds one or two segments, not thousands; base64's own alphabet
# has '/', so the request is found by going right from the start, never by splitting at every '/'. Each
# candidate costs one decode of up to the whole path, so this bounds the work of any GET.
MAX_GET_CANDIDATES = 4

_URLSAFE = bytes.maketrans(b"-_", b"+/")


# -- GET ---------------------------------------------------------------------------------------------


def origin_form(target: bytes) -> bytes:
    """The path and query of a request target. RFC 9112 3.2.2: a server MUST accept the absolute-form
    (``http://host:port/path?query``, sent to proxies and by some clients), so its scheme and authority
    are dropped; an origin-form target (``/path?query``) and anything else come back unchanged."""
    if target[:1] == b"/":
        return target
    i = target.find(b"://")
    if i <= 0 or target[:i].lower() not in (b"http", b"https"):
        return target
    rest = target[i + 3:]
    for j, c in enumerate(rest):
        if c == 0x2F:  # '/': the authority ends, the path begins
            return rest[j:]
        if c == 0x3F:  # '?': an empty path
            return b"/" + rest[j:]
    return b"/"



def _der_length_ok(der: bytes) -> bool:
    """True when ``der`` is exactly one DER SEQUENCE (tag and length only; contents unchecked)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return 2 + first == len(der)
    n = first & 0x7F
    if n == 0 or n > 4 or len(der) < 2 + n:
        return False
    length = int.from_bytes(der[2:2 + n], "big")
    return 2 + n + length == len(der)


def decode_b64_component(text: bytes) -> bytes:
    """Percent-decode then base64-decode one URL component; raises MalformedRequest."""
    raw = unquote_to_bytes(text) if b"%" in text else text
    # Some clients and proxies turn '+' into a space; base64 has no spaces, so undo that.
    raw = raw.replace(b" ", b"+").strip(b"\r\n\t").translate(_URLSAFE)
    raw = raw.rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw, strict_mode=True)  # base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest("GET path is not base64") from None


def _candidates(rest: bytes) -> Iterator[int]:
    """Offsets in ``rest`` where the base64 request may begin: 0, then after each of the first
    ``MAX_GET_CANDIDATES - 1`` slashes when what follows looks like the start of a DER SEQUENCE.

    Offsets, not copies: the caller slices only the few it decodes, so the cost of any path is a few
    passes over it, however many slashes it has."""
    yield 0
    start = 0
    for _ in range(MAX_GET_CANDIDATES - 1):
        i = rest.find(b"/", start)
        if i < 0:
            return
        start = i + 1
        # A base64 DER SEQUENCE begins with 'M' (0x30 -> 'M...'), possibly percent-encoded.
        if rest.startswith(b"M", start) or rest[start:start + 3].upper() == b"%4D":
            yield start


def request_from_path(path: bytes | str, prefix: str = "/", *, max_bytes: int | None = None) -> bytes:
    """The DER OCSPRequest carried by a GET request path (RFC 6960 A.1).

    ``path`` is the request target as received (query string allowed, ignored). ``prefix`` is the
    configured path prefix, e.g. "/" or "/ocsp/". When the remainder after the prefix is not a
    request, its tails after the first few '/' are tried (at most ``MAX_GET_CANDIDATES`` decodes in
    all), so the responder also works when a proxy forwards ``/ocsp/<base64>`` to it unchanged.
    Raises MalformedRequest.
    """
    if isinstance(path, str):
        path = path.encode("latin-1", "replace")
    pfx = prefix.encode()
    if not pfx.endswith(b"/"):
        pfx += b"/"
    if len(path) > MAX_PATH_CHARS:
        raise MalformedRequest("GET path too long")
    q = path.find(b"?")
    if q >= 0:
        path = path[:q]
    if not path.startswith(pfx):
        # The prefix without its trailing slash followed by nothing is an empty request.
        raise MalformedRequest(f"GET path outside the prefix {prefix!r}")
    rest = path[len(pfx):]
    if not rest:
        raise MalformedRequest("GET path carries no request")

    oversized = 0
    for offset in _candidates(rest):
        try:
            der = decode_b64_component(rest[offset:] if offset else rest)
        except MalformedRequest:
            continue
        if max_bytes is not None and len(der) > max_bytes:
            # Junk before the request can decode too (a long proxy segment): a later candidate may
            # still be the request, so an oversized one only decides when nothing else does.
            oversized = max(oversized, len(der))
            continue
        if _der_length_ok(der):
            return der
    if oversized and max_bytes is not None:
        raise MalformedRequest(f"request of {oversized} bytes exceeds {max_bytes}")
    raise MalformedRequest("GET path does not carry a base64 DER OCSPRequest")


class PathKeys:
    """A bounded memo in front of ``request_from_path``: the raw request target of a GET that
    decoded to a request -> that DER request (the cache key), so a repeated GET (every poll of
    one certificate's status) pays one dict lookup instead of the percent- and base64-decoding.

    Only successes are kept, and only targets of at most ``max_target`` bytes; past ``max_entries``
    the oldest goes (first in, first out; a hit does not reorder). So it holds at most
    ``max_entries * (max_target + the DER of max_target's base64)`` bytes (about 4 MB by default),
    and a client sending ever new paths costs one insertion and one eviction each. The decoding is
    a function of the target and the server's settings alone, so the memo never changes an answer:
    the caller looks the target up (``get``) before routing it and ``put``s only a target that went
    the whole way through routing and ``request_from_path``."""

    __slots__ = ("_keys", "get", "max_entries", "max_target")

    def __init__(self, max_entries: int = 2048, max_target: int = 1024) -> None:
        self.max_entries = max_entries
        self.max_target = max_target
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self.get = self._keys.get  # the hit path: one C call

    def __len__(self) -> int:
        return len(self._keys)

    def put(self, target: bytes, der: bytes) -> None:
        if len(target) > self.max_target or self.max_entries <= 0:
            return
        keys = self._keys
        while len(keys) >= self.max_entries:
            keys.popitem(last=False)
        keys[target] = der


# -- caching headers --------------------------------------------------------------------------------


def http_date(epoch_seconds: float) -> str:
    """IMF-fixdate (RFC 9110 5.6.7), e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    return formatdate(int(epoch_seconds), usegmt=True)


def _epoch(t: datetime | float) -> int:
    return int(t.timestamp()) if isinstance(t, datetime) else int(t)


def etag(response_der: bytes) -> str:
    """Strong ETag: quoted lower-case hex SHA-256 of the response DER."""
    return '"' + hashlib.sha256(response_der).hexdigest() + '"'


def max_age(now: datetime | float, next_update: datetime | float, cap: int | None = None) -> int:
    """Seconds a cache may keep the answer: until nextUpdate, at most ``cap``, never negative."""
    n = _epoch(next_update) - _epoch(now)
    if cap is not None:
        n = min(n, cap)
    return max(n, 0)


def cache_control(age: int) -> str:
    return f"max-age={age}, {CACHEABLE_DIRECTIVES}"


def validator_headers(response_der: bytes, this_update: datetime | int,
                      next_update: datetime | int) -> list[tuple[str, str]]:
    """The headers of a cacheable answer that do not depend on the time of sending."""
    return [
        ("Expires", http_date(_epoch(next_update))),
        ("Last-Modified", http_date(_epoch(this_update))),
        ("ETag", etag(response_der)),
    ]
