"""OCSP answers as HTTP bytes: the one place an answer, a cache entry or an OCSP error status
becomes an HTTP/1.1 response (always 200, application/ocsp-response, RFC 6960 A.1).

A cacheable answer (signed, no nonce) carries ``Cache-Control: max-age`` (until its nextUpdate, at
most cache.max_age) in front of the validator lines ``static_headers`` made when it was stored;
anything else is ``no-cache``.
"""

from __future__ import annotations

from frontend.cache import Entry
from frontend.http_conn import NO_CACHE, http_response
from shared.ocsp import http as ohttp
from shared.ocsp.response import error_response
from shared.ocsp.types import ResponseStatus

_CT_OCSP = b"Content-Type: application/ocsp-response\r\n"
_CC_TAIL = (", " + ohttp.CACHEABLE_DIRECTIVES + "\r\n").encode()


def static_headers(der: bytes, this_update: int, next_update: int) -> bytes:
    """Header lines of a cacheable answer that do not change while it is cached (no Date, no
    Cache-Control): Content-Type, Content-Length and the validators (frontend.cache stores them)."""
    return (_CT_OCSP + b"Content-Length: %d\r\n" % len(der)
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in ohttp.validator_headers(der, this_update, next_update)))


def ocsp_http(der: bytes, headers: bytes, next_update: int | None, max_age_cap: int, now: float,
              close: bool, head: bool = False, not_modified: bool = False, date_now: float | None = None) -> bytes:
    """The HTTP answer carrying the DER OCSPResponse ``der``. ``next_update`` None: not cacheable;
    else ``headers`` are its ``static_headers`` and max-age counts from ``now``. ``not_modified``:
    a 304 (headers, no body) for a cache revalidating what it holds. ``date_now``: the Date header's
    time (None: the clock's). Positional on the cache-hit path (keywords cost there)."""
    if next_update is None:
        lines = _CT_OCSP + b"Content-Length: %d\r\n" % len(der) + NO_CACHE
    else:
        age = next_update - int(now)
        age = min(age, max_age_cap)
        age = max(age, 0)
        lines = b"Cache-Control: max-age=%d%s%s" % (age, _CC_TAIL, headers)
    if not_modified:
        return http_response(304, lines, b"", close=close, head=True, now=date_now)
    return http_response(200, lines, der, close=close, head=head, now=date_now)


class HitAnswers:
    """The whole keep-alive 200 answer of each cache entry hit in the current second, so that further
    hits on it in that second cost one dict lookup instead of formatting the same bytes again.

    A cache hit's answer is a function of the entry and the second alone (Date and max-age count
    whole seconds of the same clock reading), so the kept bytes are exactly what ``ocsp_http`` makes:
    ``answer`` makes them with it the first time. Every answer goes when the second changes, and at
    most ``max_answers`` are kept in one second (past that ``answer`` formats each hit as before):
    about 2 KB each. An answer is kept with the entry it was made from and served for that entry
    only, so a replaced or refreshed entry gets its own."""

    __slots__ = ("_answers", "_sec", "max_age_cap", "max_answers")

    def __init__(self, max_age_cap: int, max_answers: int = 256) -> None:
        self.max_age_cap = max_age_cap
        self.max_answers = max_answers
        self._sec = -1
        self._answers: dict[bytes, tuple[Entry, bytes]] = {}

    def answer(self, key: bytes, entry: Entry, now: float) -> bytes:
        """``ocsp_http`` of the cache entry ``entry`` (stored under ``key``) at ``now``, not closing,
        with its body."""
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._answers = {}
        got = self._answers.get(key)
        if got is not None and got[0] is entry:
            return got[1]
        data = ocsp_http(entry.der, entry.headers, entry.next_update, self.max_age_cap, now, False, False,
                         False, now)
        if len(self._answers) < self.max_answers:
            self._answers[key] = (entry, data)
        return data


def ocsp_error_http(status: ResponseStatus, *, close: bool, head: bool = False) -> bytes:
    """The HTTP answer carrying the unsigned OCSP error response of ``status``."""
    return ocsp_http(error_response(status), b"", None, 0, 0.0, close, head)
