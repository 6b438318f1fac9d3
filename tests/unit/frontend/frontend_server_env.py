"""The real frontend HTTP server in-process (127.0.0.1, port 0) with a fake signer, for the
test_http_* and test_frontend_* modules: ``Env`` (two CAs, one index.txt and one CRL, a FakeClock, a
ResponseCache, the server on its own uvloop thread), the raw-socket helpers, and ``Client``, one
keep-alive connection from a chosen 127/8 address."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

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
from frontend.status.crl import CrlSource
from frontend.status.index_txt import IndexTxtSource
from shared.clock import FakeClock
from shared.ocsp.response import error_response
from shared.ocsp.types import HashAlgorithm, ResponseStatus, SingleStatus
from tests.unit.frontend.frontend_pki import NOW, TestCA, write

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


# The [listen] settings of the ``env`` and ``env_prefix`` fixtures.
LISTEN = ListenConfig(port=0, max_request_bytes=2000, idle_timeout=30, request_timeout=10)
PREFIX_LISTEN = ListenConfig(port=0, path_prefix="/ocsp/", allowed_hashes=(HashAlgorithm.SHA1,
                                                                            HashAlgorithm.SHA256))


def serving(tmp: Path, listen: ListenConfig) -> Iterator[Env]:
    """The body of a fixture: a started Env, closed after the test."""
    e = Env(tmp, listen)
    yield e
    e.close()


def b64path(der: bytes, prefix: str = "/") -> str:
    return prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def statuses(body: bytes) -> list[dict[str, Any]]:
    return json.loads(body)["statuses"]


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


def open_count(env: Env) -> int:
    async def count() -> int:
        return len(env.server.connections)
    return env.call(count())


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
