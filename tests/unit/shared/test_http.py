"""shared.ocsp.http: GET path decoding (RFC 6960 A.1) and caching headers (RFC 9919/5019)."""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest

from shared.ocsp import http
from shared.ocsp.errors import MalformedRequest

# A DER SEQUENCE of 67 bytes whose base64 has '+', '/' and needs padding.
DER = b"\x30\x41" + bytes(range(0xF0, 0x100)) + bytes(range(49))
assert len(DER) == 67
B64 = base64.b64encode(DER).decode()
assert "+" in B64 or "/" in B64


def encodings() -> list[str]:
    plain = B64
    quoted = urllib.parse.quote(B64, safe="")
    urlsafe = base64.urlsafe_b64encode(DER).decode()
    return [plain, quoted, plain.rstrip("="), quoted.replace("%3D", ""), urlsafe, urlsafe.rstrip("="),
            re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted), plain.replace("+", " ")]


@pytest.mark.parametrize("text", encodings())
def test_get_path_encodings(text: str) -> None:
    assert http.request_from_path("/" + text, "/") == DER


@pytest.mark.parametrize("prefix", ["/ocsp/", "/ocsp", "/a/b/"])
def test_get_path_under_prefix(prefix: str) -> None:
    p = prefix if prefix.endswith("/") else prefix + "/"
    assert http.request_from_path(p + urllib.parse.quote(B64, safe=""), prefix) == DER


def test_proxy_forwarding_full_path_with_root_prefix() -> None:
    # The proxy forwards /ocsp/<b64> unchanged to a responder configured with prefix "/".
    assert http.request_from_path("/ocsp/" + B64, "/") == DER
    assert http.request_from_path(b"/x/y/" + urllib.parse.quote(B64, safe="").encode(), "/") == DER


def test_query_string_ignored() -> None:
    assert http.request_from_path("/" + urllib.parse.quote(B64, safe="") + "?x=1", "/") == DER


@pytest.mark.parametrize("path", ["/", "/!!!!", "/" + B64[:-6], "/AAAA", "/ocsp/" + B64, "/" + "A" * 200000])
def test_get_path_malformed(path: str) -> None:
    with pytest.raises(MalformedRequest):
        http.request_from_path(path, "/" if not path.startswith("/ocsp/") else "/other/")


def test_max_bytes() -> None:
    with pytest.raises(MalformedRequest):
        http.request_from_path("/" + B64, "/", max_bytes=10)


def test_cacheable_headers() -> None:
    """What the server sends with a cacheable answer: Cache-Control from max_age, validators."""
    tu = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    nu = tu + timedelta(hours=4)
    now = tu + timedelta(minutes=30)
    assert http.cache_control(http.max_age(now, nu)) == "max-age=12600, public, no-transform, must-revalidate"
    h = dict(http.validator_headers(b"resp", tu, nu))
    assert parsedate_to_datetime(h["Expires"]) == nu
    assert parsedate_to_datetime(h["Last-Modified"]) == tu
    assert h["Expires"] == "Sun, 01 Mar 2026 16:00:00 GMT"
    assert h["ETag"] == '"' + hashlib.sha256(b"resp").hexdigest() + '"'
    assert http.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize("now_offset,cap,expected", [(0, None, 3600), (0, 600, 600), (3600, None, 0),
                                                      (7200, None, 0), (3000, 1000, 600)])
def test_max_age(now_offset: int, cap: int | None, expected: int) -> None:
    assert http.max_age(1000 + now_offset, 4600, cap) == expected


def test_uncacheable() -> None:
    assert "max-age" not in http.NOT_CACHEABLE and "no-store" in http.NOT_CACHEABLE


@pytest.mark.parametrize("target,expected", [
    (b"/MEIw", b"/MEIw"),
    (b"http://ocsp.example/MEIw%2Bx/y", b"/MEIw%2Bx/y"),
    (b"HTTPS://ocsp.example:8080/ocsp/MEIw?x=1", b"/ocsp/MEIw?x=1"),
    (b"http://ocsp.example", b"/"),
    (b"http://ocsp.example?x", b"/?x"),
    (b"*", b"*"),
    (b"ftp://x/y", b"ftp://x/y"),
])
def test_origin_form(target: bytes, expected: bytes) -> None:
    assert http.origin_form(target) == expected


# -- the work a GET path costs is bounded (issue 6.1) ------------------------------------------------

# Paths an attacker can send, each at the size the frontend's URL limit lets through (~40 KB):
# thousands of slashes each followed by something that looks like the start of a request.
WORST_PATHS = {
    "%4D/ x 10000": "/" + "%4D/" * 10_000,
    "M/ x 20000": "/" + "M/" * 20_000,
    "%4d/ x 10000": "/" + "%4d/" * 10_000,
    "/ x 40000": "/" * 40_001,
    "MEIw/ x 8000": "/" + "MEIw/" * 8_000,
    "M%2F x 13000": "/" + "M%2F" * 13_000,
    "B64/ x 400": "/" + (B64 + "/") * 400,
    "prefix then M/": "/ocsp/" + "M/" * 20_000,
    # Tails that start like a request but do not decode, so no early answer ends the search:
    "M!/ x 13000": "/" + "M!/" * 13_000,
    "%4D!/ x 8000": "/" + "%4D!/" * 8_000,
    "M=/ x 13000": "/" + "M=/" * 13_000,
    "MEIw%/ x 8000": "/" + "MEIw%/" * 6_600,
}


@pytest.mark.parametrize("name", WORST_PATHS)
def test_worst_paths_decode_a_bounded_number_of_candidates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = http.decode_b64_component

    def counting(text: bytes) -> bytes:
        calls.append(len(text))
        return real(text)

    monkeypatch.setattr(http, "decode_b64_component", counting)
    with pytest.raises(MalformedRequest):
        http.request_from_path(WORST_PATHS[name], "/", max_bytes=10_000)
    assert 1 <= len(calls) <= 4
    # ... and no more than a few passes over the path in all.
    assert sum(calls) <= 4 * len(WORST_PATHS[name])


@pytest.mark.parametrize("name", WORST_PATHS)
def test_worst_paths_use_memory_linear_in_the_path(name: str) -> None:
    import tracemalloc

    path = WORST_PATHS[name].encode()
    tracemalloc.start()
    try:
        with pytest.raises(MalformedRequest):
            http.request_from_path(path, "/", max_bytes=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A bounded multiple of the path (percent-decoding a path of 10,000 escapes builds that many small
    # pieces: about 60x), not one copy per slash: the old code peaked at 200-400 MB on these.
    assert peak < 100 * len(path) + 65536, peak


@pytest.mark.parametrize("segments", ["", "ocsp/", "a/b/", "a/b/c/", "M/b/", "MEIw/x/"])
@pytest.mark.parametrize("quote", [False, True])
def test_proxy_segments_before_the_request_still_work(segments: str, quote: bool) -> None:
    """Up to three extra segments a proxy puts before the base64 (whose own '/' must not confuse it)."""
    text = urllib.parse.quote(B64, safe="") if quote else B64
    assert "/" in B64
    assert http.request_from_path("/" + segments + text, "/") == DER


def test_more_proxy_segments_than_candidates_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        http.request_from_path("/a/b/c/d/" + B64, "/")


def test_a_long_segment_before_the_request_does_not_hide_it() -> None:
    """Junk that decodes to more than max_bytes before the real request: the request is still found;
    an oversized candidate decides only when nothing else is a request."""
    junk = "M" + "A" * 19_999  # base64 of 15,000 bytes, over a 10,000-byte limit
    assert http.request_from_path(f"/{junk}/{B64}", "/", max_bytes=10_000) == DER
    with pytest.raises(MalformedRequest, match="exceeds 10000"):
        http.request_from_path(f"/{junk}", "/", max_bytes=10_000)


def test_path_keys_bounded_first_in_first_out() -> None:
    keys = http.PathKeys(max_entries=3, max_target=20)
    for i in range(5):
        keys.put(b"/t%d" % i, b"der%d" % i)
    assert len(keys) == 3
    assert keys.get(b"/t0") is None and keys.get(b"/t1") is None
    assert [keys.get(b"/t%d" % i) for i in (2, 3, 4)] == [b"der2", b"der3", b"der4"]
    keys.put(b"/" + b"x" * 20, b"long")  # over max_target: not kept, nothing evicted
    assert keys.get(b"/" + b"x" * 20) is None and len(keys) == 3 and keys.get(b"/t2") == b"der2"
    empty = http.PathKeys(max_entries=0)
    empty.put(b"/t", b"der")
    assert len(empty) == 0


def test_percent_free_component_decodes_as_before() -> None:
    """Percent-decoding is skipped without a '%': the result is the same either way."""
    for text in encodings():
        raw = text.encode()
        assert http.decode_b64_component(raw) == DER
        assert http.decode_b64_component(urllib.parse.unquote_to_bytes(raw)) == DER
