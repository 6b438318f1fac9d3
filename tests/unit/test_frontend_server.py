"""The real HTTP server in-process (127.0.0.1, port 0) with a fake signer.

Covers POST/GET/prefixes, the cache, OCSP error mapping, and HTTP behaviour: 413, 405, 411, bad
HTTP, keep-alive, pipelining order, HTTP/1.0, HEAD and the health endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from frontend.app import CaEntry, OcspApp, build_issuers
from frontend.cache import ResponseCache
from frontend.config import ListenConfig
from frontend.http_answer import static_headers
from frontend.http_app import FrontendServer
from frontend.signer_client import SignResult
from shared.clock import FakeClock
from shared.ocsp.errors import OCSPError, TryLater
from shared.ocsp.response import error_response
from shared.ocsp.types import HashAlgorithm, ResponseStatus, SingleStatus
from shared.status.crl import CrlSource
from shared.status.index_txt import IndexTxtSource
from tests.integration.conftest import wait_until
from tests.unit.frontend_pki import NOW, TestCA, write

MALFORMED = error_response(ResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = error_response(ResponseStatus.UNAUTHORIZED)
TRY_LATER = error_response(ResponseStatus.TRY_LATER)
INTERNAL = error_response(ResponseStatus.INTERNAL_ERROR)


class FakeSigner:
    """Returns a canned 'response': JSON of what it was asked to sign, so tests can read it."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[SingleStatus], bytes | None]] = []
        self.fail: BaseException | None = None
        self.delay = 0.0
        self.generation = 1
        self.active = 0
        self.max_active = 0  # most sign calls running at once

    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult:
        self.calls.append((list(statuses), nonce))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        if self.fail is not None:
            raise self.fail
        out = [{"serial": s.cert_id.serial_int, "status": s.status.value,
                "reason": s.revocation.reason.name
                if s.revocation and s.revocation.reason is not None else None,
                "this_update": int(s.this_update.timestamp()), "next_update": int(s.next_update.timestamp())}
               for s in statuses]
        return SignResult(json.dumps({"statuses": out, "nonce": nonce.hex() if nonce else None}).encode(),
                          self.generation, "fp")


def index_line(flag: str, serial: int, rev: str = "") -> str:
    return "\t".join([flag, "301231235959Z", rev, format(serial, "X"), "unknown", "/CN=x"]) + "\n"


SHA1 = hashes.SHA1()  # the default CertID hash of the requests built here


class Env:
    def __init__(self, tmp: Path, listen: ListenConfig) -> None:
        self.a = TestCA("Index CA")
        self.b = TestCA("CRL CA")
        self.other = TestCA("Not Served CA")
        self.index = write(tmp / "index.txt",
                           index_line("V", 0x100) + index_line("R", 0x101, "250101000000Z,keyCompromise"))
        self.crl = write(tmp / "crl.der", self.b.crl([(0x201, NOW, x509.ReasonFlags.superseded, None)],
                                                    next_update=NOW + timedelta(days=1)))
        self.src_a = IndexTxtSource("a", self.index, timedelta(hours=1))
        self.src_b = CrlSource("b", self.crl, self.b.der, unissued="good")
        self.src_a.load_now()
        self.src_b.load_now()
        self.signer = FakeSigner()
        self.clock = FakeClock(NOW + timedelta(minutes=1))
        self.cache = ResponseCache(100, 3600.0, clock=lambda: self.clock.now().timestamp())
        self.listen = listen
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: FrontendServer = self.call(self._start())
        self.port = self.server.address[1]

    async def _start(self) -> FrontendServer:
        issuers = build_issuers([(self.a.der, CaEntry("a", self.src_a)),
                                 (self.b.der, CaEntry("b", self.src_b))])
        app = OcspApp(issuers=issuers, signer=self.signer, cache=self.cache, listen=self.listen,
                      stored_headers=static_headers, clock=self.clock)
        server = FrontendServer(app, self.listen)
        await server.start()
        return server

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def request(self, ca: TestCA, serial: int, *, nonce: bytes | None = None,
                algorithm: hashes.HashAlgorithm = SHA1) -> bytes:
        b = ocsp.OCSPRequestBuilder().add_certificate(ca.leaf(serial), ca.cert, algorithm)
        if nonce is not None:
            b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
        return b.build().public_bytes(serialization.Encoding.DER)

    def post(self, body: bytes, path: str = "/", headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", path, body=body,
                         headers=headers if headers is not None
                         else {"Content-Type": "application/ocsp-request"})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


def b64path(der: bytes, prefix: str = "/") -> str:
    return prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, ListenConfig(port=0, max_request_bytes=2000, idle_timeout=30, request_timeout=10))
    yield e
    e.close()


@pytest.fixture
def env_prefix(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, ListenConfig(port=0, path_prefix="/ocsp/", allowed_hashes=(HashAlgorithm.SHA1,
                                                                                    HashAlgorithm.SHA256)))
    yield e
    e.close()


def statuses(body: bytes) -> list[dict[str, Any]]:
    return json.loads(body)["statuses"]


# -- the OCSP pipeline ---------------------------------------------------------------------------------


@pytest.mark.parametrize("serial,status,reason", [(0x100, "good", None), (0x101, "revoked", "KEY_COMPROMISE"),
                                                  (0x102, "unknown", None)])
def test_post_index_ca(env: Env, serial: int, status: str, reason: str | None) -> None:
    code, headers, body = env.post(env.request(env.a, serial))
    assert code == 200 and headers["content-type"] == "application/ocsp-response"
    (s,) = statuses(body)
    assert (s["serial"], s["status"], s["reason"]) == (serial, status, reason)
    now = int(env.clock.now().timestamp())
    assert s["this_update"] == now and s["next_update"] == now + 3600


def test_crl_ca_times_from_crl(env: Env) -> None:
    _code, _, body = env.post(env.request(env.b, 0x201))
    (s,) = statuses(body)
    assert s["status"] == "revoked" and s["reason"] == "SUPERSEDED"
    assert s["this_update"] == int(NOW.timestamp())
    assert s["next_update"] == int((NOW + timedelta(days=1)).timestamp())
    (s,) = statuses(env.post(env.request(env.b, 0x999))[2])
    assert s["status"] == "good"  # unissued = "good" chosen in this setup


def test_stale_crl_try_later(env: Env) -> None:
    env.clock.advance(timedelta(days=2))
    code, headers, body = env.post(env.request(env.b, 0x201))
    assert code == 200 and body == TRY_LATER
    assert "max-age" not in headers["cache-control"]
    assert not env.signer.calls


def test_cache_hit_skips_signer_and_has_headers(env: Env) -> None:
    der = env.request(env.a, 0x100)
    first = env.post(der)
    second = env.post(der)
    assert len(env.signer.calls) == 1
    assert first[2] == second[2]
    h = second[1]
    assert h["cache-control"].endswith("public, no-transform, must-revalidate")
    assert h["cache-control"].startswith("max-age=")
    assert 0 < int(h["cache-control"].split("=")[1].split(",")[0]) <= 3600
    assert h["etag"].startswith('"') and len(h["etag"]) == 66
    assert "expires" in h and "last-modified" in h and "date" in h


def test_crl_answers_cached_when_crl_older_than_max_age(env: Env) -> None:
    env.clock.advance(timedelta(hours=20))  # the CRL is 20 h old, max_age 1 h, nextUpdate in 4 h
    der = env.request(env.b, 0x201)
    first = env.post(der)
    second = env.post(der)
    assert len(env.signer.calls) == 1 and first[2] == second[2]
    assert second[1]["cache-control"].startswith("max-age=3600,")
    env.clock.advance(timedelta(hours=3, minutes=30))  # under 1 h before nextUpdate: max-age follows it
    env.cache.invalidate()
    left = int((NOW + timedelta(days=1) - env.clock.now()).total_seconds())
    assert 0 < left < 3600
    assert env.post(der)[1]["cache-control"].startswith(f"max-age={left},")


def test_get_and_prefix(env: Env, env_prefix: Env) -> None:
    der = env.request(env.a, 0x100)
    code, headers, body = env.get(b64path(der))
    assert code == 200 and statuses(body)[0]["status"] == "good" and "etag" in headers
    der = env_prefix.request(env_prefix.a, 0x101)
    code, _, body = env_prefix.get(b64path(der, "/ocsp/"))
    assert code == 200 and statuses(body)[0]["status"] == "revoked"
    # Unpadded URL-safe base64 too.
    code, _, body = env_prefix.get("/ocsp/" + base64.urlsafe_b64encode(der).decode().rstrip("="))
    assert statuses(body)[0]["status"] == "revoked"
    # Outside the prefix: 404; the prefix itself: malformedRequest.
    assert env_prefix.get(b64path(der, "/other/"))[0] == 404
    assert env_prefix.get("/ocsp")[2] == MALFORMED
    # POST under the prefix.
    assert statuses(env_prefix.post(der, "/ocsp")[2])[0]["status"] == "revoked"


def test_post_body_spelling_a_get_target_is_not_that_get(env: Env) -> None:
    path = b64path(env.request(env.a, 0x100))
    code, _, body = env.get(path)
    assert code == 200 and statuses(body)[0]["status"] == "good"
    # The same bytes as a POST body are not a DER request: malformedRequest, not the cached answer.
    assert env.post(path.encode())[2] == MALFORMED
    assert env.get(path, "HEAD")[0] == 200 and len(env.signer.calls) == 1  # HEAD shares GET's entry


def test_absolute_form_targets(env: Env, env_prefix: Env) -> None:
    # RFC 9112 3.2.2: a server MUST accept "GET http://host/path HTTP/1.1".
    for e, prefix in ((env, "/"), (env_prefix, "/ocsp/")):
        der = e.request(e.a, 0x101)
        data = raw(e, b"GET http://ocsp.example:80" + b64path(der, prefix).encode()
                   + b" HTTP/1.1\r\nHost: ocsp.example\r\nConnection: close\r\n\r\n")
        (resp,) = split_responses(data)
        assert resp[0].startswith(b"HTTP/1.1 200") and statuses(resp[2])[0]["status"] == "revoked"
        data = raw(e, b"POST http://ocsp.example" + prefix.encode() + b" HTTP/1.1\r\nHost: ocsp.example\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(der) + der)
        assert statuses(split_responses(data)[0][2])[0]["status"] == "revoked"
    assert env.get("http://ocsp.example/-/health")[2] == b"ok\n"


def test_hash_not_allowed_unauthorized(env_prefix: Env) -> None:
    der = env_prefix.request(env_prefix.a, 0x100, algorithm=hashes.SHA512())
    assert env_prefix.post(der)[2] == UNAUTHORIZED
    der = env_prefix.request(env_prefix.a, 0x100, algorithm=hashes.SHA256())
    assert statuses(env_prefix.post(der)[2])[0]["status"] == "good"


def test_nonce_not_cached(env: Env) -> None:
    der = env.request(env.a, 0x100, nonce=b"\x01" * 16)
    for _ in range(2):
        _code, headers, body = env.post(der)
        assert json.loads(body)["nonce"]
        assert "max-age" not in headers["cache-control"] and "no-store" in headers["cache-control"]
        assert "etag" not in headers
    assert len(env.signer.calls) == 2


@pytest.mark.parametrize("body", [b"", b"\x30\x03\x02\x01\x00", b"not der", b"\x30\x80" * 100])
def test_malformed(env: Env, body: bytes) -> None:
    code, headers, answer = env.post(body)
    assert code == 200 and answer == MALFORMED
    assert "max-age" not in headers["cache-control"]


def test_bad_get_is_malformed(env: Env) -> None:
    assert env.get("/not%20base64!!")[2] == MALFORMED


def test_unknown_issuer_and_mixed_cas_unauthorized(env: Env) -> None:
    assert env.post(env.request(env.other, 0x100))[2] == UNAUTHORIZED
    from asn1crypto import ocsp as aocsp

    one = aocsp.OCSPRequest.load(env.request(env.a, 0x100))["tbs_request"]["request_list"][0]
    two = aocsp.OCSPRequest.load(env.request(env.b, 0x201))["tbs_request"]["request_list"][0]
    mixed = aocsp.OCSPRequest({"tbs_request": {"request_list": [one, two]}}).dump()
    _code, headers, body = env.post(mixed)
    assert body == UNAUTHORIZED and "max-age" not in headers["cache-control"]
    same = aocsp.OCSPRequest({"tbs_request": {"request_list": [one, one]}}).dump()
    assert len(statuses(env.post(same)[2])) == 2
    assert len(env.signer.calls) == 1


def test_served_then_unserved_issuer_unauthorized(env: Env) -> None:
    """The second CertID names a CA this responder does not serve: unauthorized, nothing signed (the
    first CertID's CA must not answer for it)."""
    from asn1crypto import ocsp as aocsp

    served = aocsp.OCSPRequest.load(env.request(env.a, 0x100))["tbs_request"]["request_list"][0]
    unserved = aocsp.OCSPRequest.load(env.request(env.other, 0x100))["tbs_request"]["request_list"][0]
    for order in ([served, unserved], [served, served, unserved]):
        der = aocsp.OCSPRequest({"tbs_request": {"request_list": order}}).dump()
        code, _headers, body = env.post(der)
        assert (code, body) == (200, UNAUTHORIZED)
    assert env.signer.calls == []


@pytest.mark.parametrize("error,expected", [(TryLater("down"), TRY_LATER), (RuntimeError("bug"), INTERNAL),
                                            (OCSPError("x"), INTERNAL)])
def test_signer_errors(env: Env, error: BaseException, expected: bytes) -> None:
    env.signer.fail = error
    code, _headers, body = env.post(env.request(env.a, 0x100))
    assert code == 200 and body == expected
    # Not cached: the next request goes to the signer again.
    env.signer.fail = None
    assert statuses(env.post(env.request(env.a, 0x100))[2])[0]["status"] == "good"


def test_reload_drops_cached_answers(env: Env) -> None:
    der = env.request(env.a, 0x100)
    assert statuses(env.post(der)[2])[0]["status"] == "good"
    write(env.index, index_line("R", 0x100, "250101000000Z,superseded")
          + index_line("R", 0x101, "250101000000Z,keyCompromise"))  # (losing a line would be refused)
    assert env.call(env.src_a.refresh(force=True))
    (s,) = statuses(env.post(der)[2])
    assert s["status"] == "revoked" and s["reason"] == "SUPERSEDED"


def test_responder_generation_change_drops_cache(env: Env) -> None:
    der = env.request(env.a, 0x100)
    env.post(der)
    env.signer.generation = 2
    env.post(env.request(env.a, 0x101))  # the signer reports a new responder for CA a
    env.post(der)
    assert len(env.signer.calls) == 3


# -- HTTP --------------------------------------------------------------------------------------------------


def raw(env: Env, data: bytes, *, shut: bool = False, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", env.port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except TimeoutError:
                break
            if not c:
                break
            chunks.append(c)
        return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
        n = int(headers.get(b"content-length", b"0"))
        out.append((lines[0], headers, rest[:n]))
        data = rest[n:]
    return out


def post_bytes(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(body), extra)) + body


def test_health(env: Env) -> None:
    code, _headers, body = env.get("/-/health")
    assert (code, body) == (200, b"ok\n")
    assert env.get("/-/other")[0] == 404
    assert env.get("/-/health", "HEAD")[2] == b""


def test_head_has_no_body(env: Env) -> None:
    der = env.request(env.a, 0x100)
    data = raw(env, b"HEAD " + b64path(der).encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert b"Content-Length: " in head


def test_413_and_close(env: Env) -> None:
    data = raw(env, post_bytes(b"\x30" * 3000) + post_bytes(env.request(env.a, 0x100)))
    (resp,) = split_responses(data)  # the second request is never answered: the connection closed
    assert resp[0].startswith(b"HTTP/1.1 413") and resp[1][b"connection"] == b"close"


def test_413_chunked(env: Env) -> None:
    chunk = b"\x30" * 1500
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    data = raw(env, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert data.startswith(b"HTTP/1.1 413")


def test_expect_100_continue(env: Env) -> None:
    der = env.request(env.a, 0x100)
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(der))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(der)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and statuses(split_responses(data)[0][2])[0]["serial"] == 0x100


def test_411_without_length(env: Env) -> None:
    data = raw(env, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 411")


def test_405(env: Env) -> None:
    code, headers, _ = env.get("/", "PUT")
    assert code == 405 and headers["allow"] == "GET, HEAD, POST"
    assert env.get("/", "DELETE")[0] == 405


def test_bad_http_400_and_close(env: Env) -> None:
    data = raw(env, b"GARBAGE\x00\x01 not http\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400") and b"Connection: close" in data


def test_header_limit(env: Env) -> None:
    data = raw(env, b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431")


def test_header_limit_counts_raw_bytes(env: Env) -> None:
    # httptools hands over a header value only once it is complete: an endless value must still
    # be cut off once the head passes max_header_bytes + the URL limit, not when it ends.
    limit = env.listen.max_header_bytes + env.server.max_url
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as s:
        s.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < limit + 65536:
                s.sendall(b"a" * 4096)
                sent += 4096
        except OSError:
            pass
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    # Just under the limit across many writes is still served (the count restarts per message).
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as s:
        for _ in range(3):
            s.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 4000 + b"\r\n\r\n")
            data = b""
            while not data.endswith(b"ok\n"):
                data += s.recv(4096)
            assert data.startswith(b"HTTP/1.1 200")


def test_keep_alive(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        for serial in (0x100, 0x101, 0x100):
            conn.request("POST", "/", body=env.request(env.a, serial))
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("connection") is None
            assert statuses(r.read())[0]["serial"] == serial
        conn.request("GET", "/-/health")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()


def test_pipelining_keeps_order(env: Env) -> None:
    env.signer.delay = 0.1  # the first (signed) answer is the slowest; it must still come first
    cached = env.request(env.a, 0x100)
    env.post(cached)
    env.signer.calls.clear()
    reqs = (post_bytes(env.request(env.a, 0x101, nonce=b"n" * 8))
            + b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_bytes(cached)
            + post_bytes(b"junk")
            + b"GET " + b64path(env.request(env.b, 0x201)).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_bytes(cached, b"Connection: close\r\n"))
    out = split_responses(raw(env, reqs))
    assert [r[0][:12] for r in out] == [b"HTTP/1.1 200"] * 6
    assert statuses(out[0][2])[0]["serial"] == 0x101
    assert out[1][2] == b"ok\n"
    assert statuses(out[2][2])[0]["serial"] == 0x100
    assert out[3][2] == MALFORMED
    assert statuses(out[4][2])[0]["serial"] == 0x201
    assert statuses(out[5][2])[0]["serial"] == 0x100 and out[5][1][b"connection"] == b"close"


def test_pipelined_misses_run_a_few_at_a_time(env: Env) -> None:
    # 40 requests in one write: all answered, in order, but not 40 Sign calls at once.
    env.signer.delay = 0.05
    reqs = b"".join(post_bytes(env.request(env.a, 0x300 + i)) for i in range(39))
    reqs += post_bytes(env.request(env.a, 0x300 + 39), b"Connection: close\r\n")
    out = split_responses(raw(env, reqs))
    assert [statuses(r[2])[0]["serial"] for r in out] == [0x300 + i for i in range(40)]
    assert len(env.signer.calls) == 40
    assert 1 < env.signer.max_active <= 8


def test_http10_closes(env: Env) -> None:
    data = raw(env, b"GET /-/health HTTP/1.0\r\n\r\n", timeout=3)
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data and data.endswith(b"ok\n")


async def _settled(timeout: float = 5.0) -> None:
    """Wait until no task but this one is left on the server's loop (answers, drains, signer calls
    finished), so an absence (nothing signed) is observed after the fact, not after a guessed delay."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    me = asyncio.current_task()
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                  and "sweep" not in repr(t.get_coro()) and "serve" not in repr(t.get_coro())]
        if not others:
            return
        assert loop.time() < deadline, f"tasks still running: {others}"
        await asyncio.wait(others, timeout=max(0.0, deadline - loop.time()))


@pytest.mark.parametrize("first", [
    b"GET /-/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",  # HTTP/1.0: answered, then closed
    b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # 411: answered, then closed
    b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
])
def test_nothing_after_a_closing_message(env: Env, first: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # Requests pipelined after a message that closes the connection are neither answered nor signed.
    miss = b"GET " + b64path(env.request(env.a, 0x100)).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with caplog.at_level("WARNING"):
        out = split_responses(raw(env, first + miss + first + miss))
        env.call(_settled())  # whatever the server started for those bytes has run to its end
    assert len(out) == 1 and out[0][1][b"connection"] == b"close"
    assert not env.signer.calls
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]


def test_idle_and_slow_clients_are_closed(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            assert s.recv(100) == b""  # idle: closed by the server
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            s.sendall(b"GET /-/health HTTP/1.1\r\n")  # never finishes its headers
            assert s.recv(100).startswith(b"HTTP/1.1 408")
    finally:
        e.close()


def test_concurrent_identical_misses_share_one_signature(env: Env) -> None:
    env.signer.delay = 0.2
    der = env.request(env.a, 0x100)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(env.post(der)[2])) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(env.signer.calls) == 1


def _app(tmp_path: Path, signer: FakeSigner) -> tuple[OcspApp, TestCA, IndexTxtSource]:
    ca = TestCA("In-flight CA")
    src = IndexTxtSource("a", write(tmp_path / "index.txt", index_line("V", 0x100)), timedelta(hours=1))
    src.load_now()
    clock = FakeClock(NOW)
    cache = ResponseCache(100, 3600.0, clock=lambda: clock.now().timestamp())
    app = OcspApp(issuers=build_issuers([(ca.der, CaEntry("a", src))]), signer=signer, cache=cache,
                  listen=ListenConfig(), stored_headers=static_headers, clock=clock)
    return app, ca, src


def _req(ca: TestCA, serial: int, nonce: bytes | None = None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(ca.leaf(serial), ca.cert, hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def test_request_after_reload_does_not_join_older_signature(tmp_path: Path) -> None:
    signer = FakeSigner()
    signer.delay = 0.2
    app, ca, src = _app(tmp_path, signer)
    der = _req(ca, 0x100)

    async def go() -> tuple[bytes, bytes, bytes]:
        first = asyncio.create_task(app.answer(der, der))
        joined = asyncio.create_task(app.answer(der, der))  # before the reload: may share
        while not signer.calls:  # both tasks run to their first suspension: the signature started
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        write(src.path, index_line("R", 0x100, "260101000000Z,keyCompromise"))
        assert await src.refresh(force=True)
        later = asyncio.create_task(app.answer(der, der))  # after the reload: must not share
        return (await first).der, (await joined).der, (await later).der

    first, joined, later = asyncio.run(go())
    assert statuses(first)[0]["status"] == "good" and joined == first
    assert statuses(later)[0]["status"] == "revoked"
    assert len(signer.calls) == 2


def test_nonce_requests_never_share_a_signature(tmp_path: Path) -> None:
    signer = FakeSigner()
    signer.delay = 0.1
    app, ca, _ = _app(tmp_path, signer)
    der = _req(ca, 0x100, nonce=b"\x07" * 16)

    async def go() -> None:
        await asyncio.gather(*(app.answer(der, der) for _ in range(3)))

    asyncio.run(go())
    assert len(signer.calls) == 3


def test_unexpected_bug_gives_internal_error(env: Env) -> None:
    # A status snapshot that blows up (a bug, not an OCSPError): internalError, connection kept.
    env.src_a.current().entries = None  # type: ignore[attr-defined, assignment]
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        conn.request("POST", "/", body=env.request(env.a, 0x100))
        assert conn.getresponse().read() == INTERNAL
        conn.request("GET", "/-/health")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()


def test_listen_config_replace_keeps_defaults() -> None:
    assert replace(ListenConfig(), port=0).max_request_bytes == 10000


# -- deadlines that a client cannot stretch ------------------------------------------------------------------

_GONE = select.POLLRDHUP | select.POLLERR | select.POLLHUP  # FIN or reset from the server; not POLLIN


def _server_side(env: Env) -> list[tuple[int, bool]]:
    """(unsent bytes, reading paused) of each connection the server holds, read on its loop."""
    async def look() -> list[tuple[int, bool]]:
        return [(c.transport.get_write_buffer_size() if c.transport else 0, c.paused)
                for c in env.server.connections]
    return env.call(look())


def _open_count(env: Env) -> int:
    async def count() -> int:
        return len(env.server.connections)
    return env.call(count())


def test_pipelining_client_that_never_reads_is_aborted(tmp_path: Path) -> None:
    """Answers pile up unsent: at the idle deadline the connection is aborted (a plain close would wait
    for the client to read them, for ever)."""
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", e.port))
        s.setblocking(False)
        burst = b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        # Send until the server holds answers it cannot write (its write buffer is the readiness signal).
        for _ in range(10_000):
            try:
                s.send(burst)
            except BlockingIOError:
                pass
            if any(unsent > 0 and paused for unsent, paused in _server_side(e)):
                break
        else:
            raise AssertionError("the server never held unsent answers")
        poller = select.poll()
        poller.register(s, _GONE)
        timeout = e.listen.idle_timeout + 4
        assert poller.poll(timeout * 1000), f"connection still open {timeout}s after the client stopped"
        wait_until(lambda: _open_count(e) == 0, 5, "the server to forget the connection")
        s.close()
    finally:
        e.close()


def test_crlf_dribbler_is_cut_off_at_the_idle_deadline(tmp_path: Path) -> None:
    """Empty lines between messages are not a request: they do not push the idle deadline back."""
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            poller = select.poll()
            poller.register(s, _GONE | select.POLLIN)
            limit = time.monotonic() + e.listen.idle_timeout + 4
            gone = False
            while not gone and time.monotonic() < limit:
                try:
                    s.sendall(b"\r\n")
                except OSError:
                    gone = True
                    break
                gone = bool(poller.poll(300))  # paces the dribble and notices the close
            assert gone, "a client sending CRLF every 300 ms is never cut off"
            try:
                assert s.recv(100) == b""  # closed, nothing said: it never sent a request
            except ConnectionResetError:
                pass
    finally:
        e.close()


# -- connection caps and per-client bounds -------------------------------------------------------------------

HEALTH = b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n"


class Client:
    """One keep-alive connection from ``source`` (any 127/8 address is this host's loopback), reading
    one answer at a time; bytes of the next answers are kept."""

    def __init__(self, env: Env, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", env.port), timeout=5, source_address=(source, 0))
        self.buf = b""

    def answer(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                ((line, headers, _),) = split_responses(head + sep)
                n = int(headers.get(b"content-length", b"0"))
                if len(rest) >= n:
                    self.buf = rest[n:]
                    return line, headers, rest[:n]
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before a whole answer: {self.buf[:200]!r}"
            self.buf += chunk

    def served(self) -> bool:
        self.sock.sendall(HEALTH)
        line, _, body = self.answer()
        return line.startswith(b"HTTP/1.1 200") and body == b"ok\n"

    def refused(self) -> None:
        """A 503 that says when to retry and that it closes, then the close (no request was sent)."""
        line, headers, _ = self.answer()
        assert line == b"HTTP/1.1 503 Service Unavailable", line
        assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close", headers
        assert self.sock.recv(100) == b""

    def close(self) -> None:
        self.sock.close()


def test_connection_past_max_connections_gets_503(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_connections=3, max_connections_per_client=0))
    clients: list[Client] = []
    try:
        clients = [Client(e) for _ in range(3)]
        assert all(c.served() for c in clients)
        extra = Client(e, "127.0.0.9")  # another address: the global cap applies to everyone
        extra.refused()
        extra.close()
        assert all(c.served() for c in clients), "the admitted connections must keep working"
        clients.pop().close()
        wait_until(lambda: _open_count(e) == 2, 5, "the server to see the close")
        clients.append(Client(e))
        assert clients[-1].served()
    finally:
        for c in clients:
            c.close()
        e.close()


def test_connections_per_client_address(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_connections=10, max_connections_per_client=2))
    clients: list[Client] = []
    try:
        clients = [Client(e), Client(e)]
        assert all(c.served() for c in clients)
        extra = Client(e)
        extra.refused()
        extra.close()
        clients.append(Client(e, "127.0.0.2"))  # another client is not held back by the first's count
        assert all(c.served() for c in clients)
    finally:
        for c in clients:
            c.close()
        e.close()


def test_refusals_are_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused connections linger to deliver their 503; past MAX_REFUSING of them at once, the next
    ones are reset at once, so a connection flood costs nothing that grows."""
    from frontend import http_conn

    monkeypatch.setattr(http_conn, "MAX_REFUSING", 2)
    e = Env(tmp_path, ListenConfig(port=0, max_connections=1))
    clients: list[Client] = []
    try:
        clients = [Client(e)]
        assert clients[0].served()
        lingering = [Client(e) for _ in range(2)]
        clients += lingering
        for c in lingering:  # read the 503 but do not close: they keep lingering on the server
            assert c.answer()[0].startswith(b"HTTP/1.1 503")
        flood = Client(e)
        clients.append(flood)
        try:
            assert flood.sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert clients[0].served()
    finally:
        for c in clients:
            c.close()
        e.close()


def test_inflight_work_is_bounded_per_client_address(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_inflight_per_client=3))
    e.signer.delay = 0.05

    def pipeline(sources: list[str]) -> None:
        clients = [Client(e, src) for src in sources]
        try:
            for i, c in enumerate(clients):
                c.sock.sendall(b"".join(post_bytes(e.request(e.a, 0x100, nonce=b"n%03d%03d" % (i, j)))
                                        for j in range(8)))
            for c in clients:
                for _ in range(8):
                    line, _, body = c.answer()
                    assert line.startswith(b"HTTP/1.1 200") and json.loads(body)["nonce"]
        finally:
            for c in clients:
                c.close()

    try:
        pipeline(["127.0.0.1"] * 3)  # 24 misses from one address over 3 connections
        assert len(e.signer.calls) == 24
        assert 1 < e.signer.max_active <= 3, e.signer.max_active
        e.signer.max_active = 0
        pipeline(["127.0.0.1", "127.0.0.2"])  # two addresses: each has its own 3 slots
        assert 3 < e.signer.max_active <= 6, e.signer.max_active
    finally:
        e.close()


# -- the cache key and the cache's bounds, through HTTP ----------------------------------------------------------


def test_every_spelling_of_one_request_shares_one_entry(env: Env) -> None:
    """The query string and path segments before the base64 are not part of an OCSP GET: they must
    not make new cache entries (each would cost a signature and evict a real answer)."""
    der = env.request(env.a, 0x100)
    b64 = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    paths = ["/" + b64, "/" + b64 + "?a=1", "/" + b64 + "?" + "q" * 5000, "/junk/" + b64,
             "/junk/more/" + b64 + "?x", "/" + base64.urlsafe_b64encode(der).decode().rstrip("=")]
    bodies = {env.get(p)[2] for p in paths}
    bodies.add(env.post(der)[2])  # the same request by POST too
    assert len(env.signer.calls) == 1 and len(bodies) == 1
    assert len(env.cache) == 1
    assert statuses(bodies.pop())[0]["serial"] == 0x100


def test_request_longer_than_max_key_bytes_is_answered_not_cached(env: Env) -> None:
    from asn1crypto import ocsp as aocsp

    n = env.listen.max_cert_ids  # SHA-512 CertIDs, as many as allowed: longer than max_key_bytes
    one = aocsp.OCSPRequest.load(env.request(env.a, 0x100, algorithm=hashes.SHA512()))[
        "tbs_request"]["request_list"][0]
    many = aocsp.OCSPRequest({"tbs_request": {"request_list": [one] * n}}).dump()
    assert env.cache.max_key_bytes < len(many) <= env.listen.max_request_bytes
    for _ in range(2):
        code, _, body = env.post(many)
        assert code == 200 and len(statuses(body)) == n
    assert len(env.signer.calls) == 2 and len(env.cache) == 0
    path = b64path(many)
    assert len(statuses(env.get(path)[2])) == n and len(env.signer.calls) == 3


def test_expired_entries_leave_without_being_asked_for(env: Env) -> None:
    for serial in (0x100, 0x101, 0x102):
        env.post(env.request(env.a, serial))
    assert len(env.cache) == 3
    env.clock.advance(timedelta(hours=2))  # past max_age: the server's once-a-second sweep drops them
    wait_until(lambda: len(env.cache) == 0, 5, "the sweep to drop expired entries")
    assert env.cache.bytes == 0


def _conn_state(env: Env) -> list[tuple[bool, int]]:
    """(reading paused, answers queued) of each connection the server holds, read on its loop."""
    async def look() -> list[tuple[bool, int]]:
        return [(c.paused, len(c.queue)) for c in env.server.connections]
    return env.call(look())


def test_pipelined_input_is_parsed_only_as_fast_as_it_is_answered(env: Env) -> None:
    """600 requests in one write: the server stops parsing once 32 answers are queued (plus what one
    16 KB parser slice holds), keeps the rest of the input unparsed, and goes on as answers leave,
    instead of making a task for every request one read brought."""
    env.signer.delay = 0.3
    reqs = [post_bytes(env.request(env.a, 0x100, nonce=b"n%05d" % i)) for i in range(600)]
    c = Client(env)
    try:
        c.sock.sendall(b"".join(reqs))
        wait_until(lambda: any(paused for paused, _ in _conn_state(env)), 5, "the server to stop reading")
        ((_, queued),) = _conn_state(env)
        per_slice = 16384 // min(len(r) for r in reqs) + 1
        assert queued <= 32 + per_slice < 600, queued
        env.signer.delay = 0
        for i in range(600):
            line, _, body = c.answer()
            assert line.startswith(b"HTTP/1.1 200") and json.loads(body)["nonce"].endswith((b"n%05d" % i).hex())
    finally:
        c.close()


def test_reset_reaches_a_client_that_does_not_read() -> None:
    """abort() alone would send a FIN (nothing unread on the server side), queued behind answers the
    client is not taking: the client would never see it. reset() must be a TCP reset."""
    from frontend.http_conn import reset, unsent

    async def go() -> tuple[int, list[tuple[int, int]]]:
        transports: list[asyncio.Transport] = []

        class Writer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transports.append(transport)  # type: ignore[arg-type]
                transport.write(b"z" * 3_000_000)  # type: ignore[attr-defined]

        server = await asyncio.get_running_loop().create_server(Writer, "127.0.0.1", 0)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, server.sockets[0].getsockname())
            while not transports:
                await asyncio.sleep(0)
            left = unsent(transports[0])
            reset(transports[0])
            poller = select.poll()
            poller.register(client, _GONE)
            for _ in range(100):  # the reset is on its way once the loop has run the close
                events = poller.poll(0)
                if events:
                    break
                await asyncio.sleep(0.01)
            return left, events
        finally:
            client.close()
            server.close()

    left, events = uvloop.run(go())
    assert left > 1_000_000  # most of it never reached the client
    assert events and events[0][1] & select.POLLERR, events
