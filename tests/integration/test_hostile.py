"""Hostile HTTP and DER against the running frontend, over raw sockets to 127.0.0.1 only.

Every exchange is bounded: each socket operation has a deadline, every loop a count. After each
test the frontend process must still be alive and still answer an ordinary OCSP request.

What the frontend does, pinned here:
- HTTP-level faults get a plain-text 4xx and ``Connection: close``, then the connection is closed:
  unparseable bytes 400, body (declared or received) over max_request_bytes 413, request line +
  headers over max_header_bytes 431, a request target too long 414, POST without a length 411,
  ambiguous framing (Content-Length with Transfer-Encoding, two Content-Lengths) 400.
- OCSP-level faults (bad base64 in a GET path, DER that is not one OCSPRequest, too many CertIDs)
  get HTTP 200 with the unsigned OCSP error response ``malformedRequest`` (RFC 6960 2.3), not
  cacheable; the connection stays usable.
- Chunked POST bodies are accepted (RFC 9112 7.1) under the same size limit.
- A connection that sends nothing is closed after listen.idle_timeout; one that trickles its
  request gets 408 after listen.request_timeout.
"""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from frontend.config import ListenConfig, load_frontend_config
from tests.integration.conftest import Demo, Process, free_port, http_healthy, tool
from tests.integration.ocsp_client import build_multi_request, build_request, load_cert, post, random_nonce

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MALFORMED = bytes.fromhex("30030a0101")  # OCSPResponse { responseStatus malformedRequest }


# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limits(demo: Demo) -> ListenConfig:
    """The [listen] settings the demo frontend runs with (defaults filled in by the loader)."""
    return load_frontend_config(demo.path("etc", "frontend.toml")).listen


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"

    def ocsp(self) -> ocsp.OCSPResponse:
        assert self.status == 200, self
        assert self.headers["content-type"] == "application/ocsp-response", self.headers
        return ocsp.load_der_ocsp_response(self.body)


class Wire:
    """One raw TCP connection to the frontend with deadline-bounded reads."""

    def __init__(self, port: int, timeout: float = 5.0, *, source: str | None = None) -> None:
        # source: another 127/8 address to connect from (all of it is this host's loopback), to be
        # another client for the per-client limits.
        self.sock = socket.create_connection((HOST, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.eof = False
        self.reset = False

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False when the server closed on us first (which it may, on a fault)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def response(self, timeout: float = 5.0, *, head: bool = False) -> Reply:
        """Read exactly one HTTP response (Content-Length framed, as all of ours are)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError(f"no complete response head within {timeout}s "
                                     f"(eof={self.eof}, reset={self.reset}): {self.buf[:300]!r}")
        head_bytes, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        length = 0 if head or int(code) in (100, 304) else int(headers["content-length"])
        while len(self.buf) < length:
            if not self._fill(deadline):
                raise AssertionError(f"body shorter than Content-Length {length}: {self.buf!r}")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(int(code), headers, body)

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``, sending
        nothing more meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(demo: Demo) -> Iterator[Wire]:
    w = Wire(demo.http_port)
    yield w
    w.close()


def ocsp_post(der: bytes, *, extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(der), extra)) + der


def ocsp_get(der: bytes, method: bytes = b"GET") -> bytes:
    path = base64.b64encode(der).replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
    return method + b" /" + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def good_request(demo: Demo, ca: str = "rsa-ca", which: str = "good", nonce: bytes | None = None) -> bytes:
    return build_request(load_cert(demo.path(ca, f"leaf-{which}.pem")), load_cert(demo.path(ca, "ca.pem")),
                         nonce=nonce)


def assert_alive(demo: Demo, frontend: Process) -> None:
    """The frontend did not crash or wedge: the process runs and answers a normal request."""
    assert frontend.proc is not None and frontend.proc.poll() is None, \
        f"ocsp-frontend exited with {frontend.proc and frontend.proc.returncode}:\n{frontend.tail()}"
    status, _, body = post(demo.http_port, good_request(demo, nonce=random_nonce()))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD


def assert_fault(wire: Wire, status: int, timeout: float = 3.0) -> Reply:
    """A plain-text HTTP error announcing the close, then the close."""
    t0 = time.monotonic()
    reply = wire.response(timeout)
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    assert reply.closes, reply.headers
    assert wire.closed_within(timeout), "connection left open after a fault"
    assert time.monotonic() - t0 < timeout
    return reply


def assert_malformed(reply: Reply) -> None:
    assert reply.status == 200, reply
    assert reply.body == MALFORMED, reply.body
    parsed = ocsp.load_der_ocsp_response(reply.body)
    assert parsed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert "max-age" not in reply.headers.get("cache-control", ""), reply.headers
    assert "no-store" in reply.headers["cache-control"], reply.headers


# -- sizes -----------------------------------------------------------------------------------------------


def test_huge_content_length_refused_before_body(demo: Demo, frontend: Process, wire: Wire) -> None:
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
              b"Content-Length: 1000000000000\r\n\r\n")
    reply = assert_fault(wire, 413, timeout=2.0)
    assert b"larger than" in reply.body
    assert_alive(demo, frontend)


def test_content_length_overflowing_integers(demo: Demo, frontend: Process, wire: Wire) -> None:
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n")
    reply = wire.response(2.0)
    assert reply.status in (400, 413), reply
    assert reply.closes and wire.closed_within(2.0)
    assert_alive(demo, frontend)


def test_body_over_limit(demo: Demo, frontend: Process, limits: ListenConfig, wire: Wire) -> None:
    n = limits.max_request_bytes + 1
    wire.send(ocsp_post(b"\x30" * n))
    assert_fault(wire, 413)
    assert_alive(demo, frontend)


def test_body_at_limit_is_parsed(demo: Demo, frontend: Process, limits: ListenConfig, wire: Wire) -> None:
    wire.send(ocsp_post(b"\x00" * limits.max_request_bytes))
    assert_malformed(wire.response())
    assert_alive(demo, frontend)


@pytest.mark.parametrize("what", ["many", "one-big"])
def test_header_flood(demo: Demo, frontend: Process, wire: Wire, what: str) -> None:
    if what == "many":
        flood = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    else:
        flood = b"X-Big: " + b"a" * 1_000_000 + b"\r\n"
    # The server may close while we are still sending; what it said before that must arrive.
    wire.send(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + flood + b"\r\n")
    assert_fault(wire, 431)
    assert_alive(demo, frontend)


def test_long_get_path(demo: Demo, frontend: Process, limits: ListenConfig, wire: Wire) -> None:
    n = 5 * limits.max_request_bytes + 2048  # past what any accepted request can need, base64'd
    wire.send(b"GET /" + b"M" * n + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_fault(wire, 414)
    assert_alive(demo, frontend)


# -- framing ---------------------------------------------------------------------------------------------


def chunked(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_chunked_post_served(demo: Demo, frontend: Process, wire: Wire, size: int) -> None:
    nonce = random_nonce()
    der = good_request(demo, "ec-ca", "revoked", nonce=nonce)
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + chunked(der, size))
    resp = wire.response().ocsp()
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    # Keep-alive survives a chunked request.
    wire.send(ocsp_post(good_request(demo)))
    assert wire.response().ocsp().certificate_status == ocsp.OCSPCertStatus.GOOD
    assert_alive(demo, frontend)


def test_chunked_post_over_limit(demo: Demo, frontend: Process, limits: ListenConfig, wire: Wire) -> None:
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
              + chunked(b"A" * (limits.max_request_bytes + 4096), 4096))
    assert_fault(wire, 413)
    assert_alive(demo, frontend)


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # RFC 9112 6.1: smuggling vector
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 0x10\r\n",
])
def test_ambiguous_length_rejected(demo: Demo, frontend: Process, wire: Wire, head: bytes) -> None:
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n0\r\n\r\nhello!")
    assert_fault(wire, 400)
    assert_alive(demo, frontend)


def test_post_without_length(demo: Demo, frontend: Process, wire: Wire) -> None:
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_fault(wire, 411)
    assert_alive(demo, frontend)


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior knowledge
    bytes(range(256)) * 4,
    b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",  # header without colon
    b"GET / HTTP/9.9\r\n\r\n",
])
def test_garbage(demo: Demo, frontend: Process, wire: Wire, data: bytes) -> None:
    wire.send(data)
    reply = wire.response(3.0)
    assert 400 <= reply.status < 500, reply  # 400; httptools may call a bad version 505-ish: stay 4xx
    assert reply.closes and wire.closed_within(3.0)
    assert_alive(demo, frontend)


@pytest.mark.parametrize("target", [b"/abc\x00def", b"/\x00", b"/\xc3\xa9\xff", b"/\x7f", b"/ab\tcd"])
def test_control_and_non_ascii_in_path(demo: Demo, frontend: Process, wire: Wire, target: bytes) -> None:
    """RFC 9112 3.2: the request-target is visible ASCII. NUL and other bytes: 400 and close."""
    wire.send(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = wire.response(3.0)
    if reply.status == 200:  # tolerated and decoded as a GET request: must be an OCSP error
        assert_malformed(reply)
    else:
        assert reply.status == 400, reply
        assert reply.closes and wire.closed_within(3.0)
    assert_alive(demo, frontend)


def test_percent_encoded_nul_in_path(demo: Demo, frontend: Process, wire: Wire) -> None:
    wire.send(b"GET /%00%00%FF%C3%A9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_malformed(wire.response())
    assert_alive(demo, frontend)


def test_http10_closed_after_answer(demo: Demo, frontend: Process, wire: Wire) -> None:
    der = good_request(demo, "ec-ca")
    wire.send(b"POST / HTTP/1.0\r\nContent-Type: application/ocsp-request\r\nContent-Length: %d\r\n\r\n"
              % len(der) + der)
    reply = wire.response()
    assert reply.ocsp().certificate_status == ocsp.OCSPCertStatus.GOOD
    assert reply.closes
    assert wire.closed_within(3.0)
    assert_alive(demo, frontend)


def test_connection_close_honoured(demo: Demo, frontend: Process, wire: Wire) -> None:
    # The second request after "Connection: close" must not be answered.
    wire.send(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
              b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = wire.response()
    assert reply.status == 200 and reply.closes
    assert wire.closed_within(3.0) and wire.buf == b""
    assert_alive(demo, frontend)


def test_expect_100_continue(demo: Demo, frontend: Process, wire: Wire) -> None:
    der = good_request(demo)
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
              % len(der))
    assert wire.response().status == 100
    wire.send(der)
    assert wire.response().ocsp().certificate_status == ocsp.OCSPCertStatus.GOOD
    assert_alive(demo, frontend)


def test_head_has_no_body(demo: Demo, frontend: Process, wire: Wire) -> None:
    der = good_request(demo)
    wire.send(ocsp_get(der, b"HEAD") + ocsp_get(der))
    head = wire.response(head=True)
    full = wire.response()
    assert head.status == full.status == 200
    assert int(head.headers["content-length"]) == len(full.body)
    assert full.ocsp().certificate_status == ocsp.OCSPCertStatus.GOOD
    assert_alive(demo, frontend)


@pytest.mark.parametrize("method", [b"PUT", b"DELETE", b"OPTIONS", b"TRACE"])
def test_other_methods(demo: Demo, frontend: Process, wire: Wire, method: bytes) -> None:
    wire.send(method + b" / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
    reply = wire.response()
    assert reply.status == 405 and "GET" in reply.headers["allow"]
    assert_alive(demo, frontend)


@pytest.mark.parametrize("request_bytes", [
    (b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),  # what `curl --http2 http://...` sends
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
], ids=["upgrade-h2c", "connect"])
def test_one_request_one_response(demo: Demo, frontend: Process, wire: Wire, request_bytes: bytes) -> None:
    """RFC 9110 7.8: a server may ignore Upgrade, but each request gets exactly one final response."""
    wire.send(request_bytes)
    reply = wire.response()
    assert reply.status in (200, 400, 405, 501), reply
    if reply.closes:
        assert wire.closed_within(3.0)
    else:
        wire.closed_within(0.5)
    assert wire.buf == b"", f"a second response to one request: {wire.buf[:200]!r}"


# -- pipelining and many connections ---------------------------------------------------------------------


def test_pipelined_100_in_one_write(demo: Demo, frontend: Process, wire: Wire) -> None:
    """100 requests of every kind (cache hits, signer round trips with nonces, GET, HEAD, health,
    malformed) in one write; 100 answers, in order."""
    cases = [(ca, which) for ca in ("rsa-ca", "ec-ca") for which in ("good", "revoked", "unknown")]
    expect_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                     "unknown": ocsp.OCSPCertStatus.UNKNOWN}
    plan: list[tuple[str, object]] = []
    out = b""
    for i in range(100):
        ca, which = cases[i % len(cases)]
        serial = load_cert(demo.path(ca, f"leaf-{which}.pem")).serial_number
        kind = ("post", "post-nonce", "get", "health", "malformed", "head")[i % 6]
        if kind == "post":
            out += ocsp_post(good_request(demo, ca, which))
        elif kind == "post-nonce":
            nonce = random_nonce()
            out += ocsp_post(good_request(demo, ca, which, nonce=nonce))
            plan.append((kind, (serial, expect_status[which], nonce)))
            continue
        elif kind == "get":
            out += ocsp_get(good_request(demo, ca, which))
        elif kind == "head":
            out += ocsp_get(good_request(demo, ca, which), b"HEAD")
        elif kind == "health":
            out += b"GET /-/health?%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i
        else:
            out += ocsp_post(b"\x30\x03\x02\x01" + bytes([i]))
        plan.append((kind, (serial, expect_status[which], None)))
    assert wire.send(out)
    deadline = time.monotonic() + 30
    for i, (kind, (serial, status, nonce)) in enumerate(plan):  # type: ignore[misc]
        reply = wire.response(max(0.1, deadline - time.monotonic()), head=kind == "head")
        assert reply.status == 200, (i, kind, reply)
        assert not reply.closes, (i, kind)
        if kind == "health":
            assert reply.body == b"ok\n", (i, reply)
        elif kind == "malformed":
            assert_malformed(reply)
        elif kind == "head":
            assert reply.body == b"" and int(reply.headers["content-length"]) > 0
        else:
            resp = reply.ocsp()
            assert resp.serial_number == serial, (i, kind)
            assert resp.certificate_status == status, (i, kind)
            if nonce is not None:
                assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce, i
    wire.send(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert wire.response().body == b"ok\n"
    assert_alive(demo, frontend)


def test_many_idle_connections(demo: Demo, frontend: Process) -> None:
    """300 connections that say nothing do not stop the frontend from serving the next one."""
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection((HOST, demo.http_port), timeout=5))
        for s in socks[::50]:
            s.sendall(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert_alive(demo, frontend)
        for s in socks[::50]:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in socks:
            s.close()
    assert_alive(demo, frontend)


# -- slow clients ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(demo: Demo, signer: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A frontend of its own with short timeouts (idle 4 s, request 2 s), so the slow-client test need
    not wait out the 30 s default."""
    d = tmp_path_factory.mktemp("quick")
    port = free_port()
    text = demo.path("etc", "frontend.toml").read_text()
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)
    text = text.replace("max_request_bytes = 10000\n",
                        'max_request_bytes = 10000\nidle_timeout = "4s"\nrequest_timeout = "2s"\n', 1)
    assert 'idle_timeout = "4s"' in text
    config = d / "frontend.toml"
    config.write_text(text)
    p = Process("ocsp-frontend", [tool("ocsp-frontend"), "--config", str(config)], demo.env,
                lambda: http_healthy(port), d / "frontend.log")
    p.port = port  # type: ignore[attr-defined]
    p.config = config  # type: ignore[attr-defined]
    p.start()
    yield p
    p.stop()


def test_slow_clients_are_cut_off(demo: Demo, quick: Process) -> None:
    """One connection sends nothing: closed after idle_timeout (not much before, not much after).
    Another trickles a request one byte every 50 ms: 408 and closed after request_timeout.
    Both run at once; the test is bounded by idle_timeout + a few seconds."""
    limits = load_frontend_config(quick.config).listen  # type: ignore[attr-defined]
    assert (limits.idle_timeout, limits.request_timeout) == (4.0, 2.0)
    port = quick.port  # type: ignore[attr-defined]
    slack = 3.0  # the server sweeps deadlines once a second
    t0 = time.monotonic()
    idle = Wire(port)
    trickle = Wire(port)
    try:
        trickle.sock.setblocking(False)
        msg = b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        sent = 0
        cut_at = None
        while time.monotonic() - t0 < limits.request_timeout + slack and sent < len(msg):
            try:
                trickle.sock.send(msg[sent:sent + 1])
                sent += 1
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                cut_at = time.monotonic() - t0
                break
            try:
                if trickle.sock.recv(1 << 16, socket.MSG_PEEK):
                    cut_at = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                cut_at = time.monotonic() - t0
                break
            time.sleep(0.05)
        assert cut_at is not None, f"trickling client not cut off after {time.monotonic() - t0:.1f}s"
        assert limits.request_timeout - 1 <= cut_at <= limits.request_timeout + slack, cut_at
        trickle.sock.setblocking(True)
        try:
            reply: Reply | None = trickle.response(2.0)
        except AssertionError:
            # Only a reset (the server closed with our bytes unread) may eat the 408.
            assert trickle.reset, f"no 408 for the trickling client: {trickle.buf[:200]!r}"
            reply = None
        if reply is not None:
            assert reply.status == 408 and reply.closes, reply

        assert not idle.closed_within(max(0.0, limits.idle_timeout - 1 - (time.monotonic() - t0))), \
            "idle connection closed before idle_timeout"
        assert idle.closed_within(limits.idle_timeout + slack - (time.monotonic() - t0)), \
            f"idle connection still open after {time.monotonic() - t0:.1f}s " \
            f"(idle_timeout {limits.idle_timeout}s)"
        assert idle.buf == b"", "a connection that sent nothing got bytes back"
    finally:
        idle.close()
        trickle.close()
    assert quick.proc is not None and quick.proc.poll() is None
    w = Wire(port)
    try:
        w.send(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert w.response().status == 200
    finally:
        w.close()


# -- OCSP-level hostility --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    b"/!!!notbase64!!!",
    b"/MAAA",  # base64 of 30 00 00: not one DER SEQUENCE
    b"/" + base64.b64encode(b"\x30\x03\x02\x01\x00"),  # a SEQUENCE, not an OCSPRequest
    b"/%ZZ%",  # broken percent-encoding
    b"/" + b"=" * 8,
])
def test_get_invalid_base64_is_malformed_request(demo: Demo, frontend: Process, wire: Wire,
                                                 path: bytes) -> None:
    """RFC 6960 2.3 / A.1: a GET whose path does not carry an OCSPRequest is answered with the
    (unsigned) malformedRequest OCSP response, HTTP 200, not cacheable; the connection stays open."""
    wire.send(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = wire.response()
    assert_malformed(reply)
    assert not reply.closes
    wire.send(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert wire.response().status == 200
    assert_alive(demo, frontend)


def test_too_many_cert_ids(demo: Demo, frontend: Process, limits: ListenConfig) -> None:
    cert, issuer = load_cert(demo.path("rsa-ca", "leaf-good.pem")), load_cert(demo.path("rsa-ca", "ca.pem"))
    # max_cert_ids + 1 within the size limit: parsed and refused.
    der = build_multi_request([(cert, issuer)] * (limits.max_cert_ids + 1))
    assert len(der) <= limits.max_request_bytes
    status, _headers, body = post(demo.http_port, der)
    assert status == 200 and body == MALFORMED
    # Exactly max_cert_ids is served, one SingleResponse each.
    status, _, body = post(demo.http_port, build_multi_request([(cert, issuer)] * limits.max_cert_ids))
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert len(list(resp.responses)) == limits.max_cert_ids
    # 1000 CertIDs are far over the byte limit: refused by size before any parsing.
    der = build_multi_request([(cert, issuer)] * 1000)
    assert len(der) > limits.max_request_bytes
    t0 = time.monotonic()
    status, _, body = post(demo.http_port, der)
    assert time.monotonic() - t0 < 3
    assert status == 413 or body == MALFORMED, (status, body[:100])
    assert_alive(demo, frontend)


def nested(depth: int, *, definite: bool) -> bytes:
    if not definite:
        return b"\x30\x80" * depth
    body = b"\x05\x00"
    for _ in range(depth):
        n = len(body)
        body = b"\x30" + (bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")) + body
    return body


@pytest.mark.parametrize("definite", [False, True], ids=["indefinite", "definite"])
def test_deeply_nested_der(demo: Demo, frontend: Process, limits: ListenConfig, definite: bool) -> None:
    # 100k nested SEQUENCE headers: over the byte limit, refused quickly by size.
    w = Wire(demo.http_port)
    try:
        big = b"\x30\x84\x00\x00\x00\x00" * 100_000 if definite else nested(100_000, definite=False)
        w.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        assert_fault(w, 413, timeout=2.0)
    finally:
        w.close()
    # As deep as fits in max_request_bytes: parsed and refused quickly, by POST and by GET.
    depth = (limits.max_request_bytes - 4) // (4 if definite else 2)
    body = nested(depth, definite=definite)
    while len(body) > limits.max_request_bytes:
        depth -= 100
        body = nested(depth, definite=definite)
    t0 = time.monotonic()
    status, _, answer = post(demo.http_port, body)
    assert status == 200 and answer == MALFORMED
    w = Wire(demo.http_port)
    try:
        w.send(ocsp_get(body))
        assert_malformed(w.response())
    finally:
        w.close()
    assert time.monotonic() - t0 < 3
    assert_alive(demo, frontend)


def _with_serial(der: bytes, content: bytes) -> bytes:
    """Replace the CertID serialNumber of a one-CertID request made by build_request with an INTEGER of
    the given content octets, fixing the five enclosing SEQUENCE lengths (all short or long form)."""
    from asn1crypto import ocsp as asn1_ocsp

    cert_id = asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"]
    old = cert_id["serial_number"].dump()
    assert der.endswith(old)
    new = b"\x02" + bytes([len(content)]) + content
    inner = der[:-len(old)] + new
    delta = len(new) - len(old)
    out = bytearray(inner)
    pos = 0
    for _ in range(5):
        assert out[pos] == 0x30
        if out[pos + 1] < 0x80:
            out[pos + 1] += delta
            assert out[pos + 1] < 0x80
            pos += 2
        else:
            n = out[pos + 1] & 0x7F
            length = int.from_bytes(out[pos + 2:pos + 2 + n], "big") + delta
            out[pos + 2:pos + 2 + n] = length.to_bytes(n, "big")
            pos += 2 + n
    return bytes(out)


@pytest.mark.parametrize("content", [b"\x00", b"\xff", b"\x01" * 20, b"\x00" + b"\xab" * 20],
                         ids=["zero", "negative", "20-octets", "20-octets-and-sign"])
def test_odd_serials_answered_unknown(demo: Demo, frontend: Process, content: bytes) -> None:
    der = _with_serial(good_request(demo), content)
    _status, _, body = post(demo.http_port, der)
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert resp.serial_number == int.from_bytes(content, "big", signed=True)
    assert_alive(demo, frontend)


@pytest.mark.parametrize("content", [b"\x01" * 21, b"\x7f" + b"\xab" * 20, b"\x01" * 40],
                         ids=["21-octets", "21-octets-of-value", "40-octets"])
def test_overlong_serials_are_malformed(demo: Demo, frontend: Process, content: bytes) -> None:
    """Longer than RFC 5280 allows: no conforming CA issued it, and every octet would be echoed into a
    signed answer and its audit record (audit-disk amplification)."""
    der = _with_serial(good_request(demo), content)
    status, _, body = post(demo.http_port, der)
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert_alive(demo, frontend)


@pytest.mark.parametrize("which", ["good", "unknown"])
def test_non_minimal_serial_never_yields_non_der(demo: Demo, frontend: Process, which: str) -> None:
    real = load_cert(demo.path("rsa-ca", f"leaf-{which}.pem")).serial_number
    content = b"\x00\x00" + real.to_bytes((real.bit_length() + 8) // 8, "big")  # padded: not DER
    status, _, body = post(demo.http_port, _with_serial(good_request(demo, which=which), content))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)  # strict DER parser: every answer we sign must be DER
    if resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
        assert resp.serial_number == real
    else:
        assert resp.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


# -- HTTP MUSTs (RFC 9112) --------------------------------------------------------


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["no-host", "two-hosts"])
def test_host_header_required(demo: Demo, frontend: Process, wire: Wire, hosts: bytes) -> None:
    wire.send(b"GET /-/health HTTP/1.1\r\n" + hosts + b"\r\n")
    assert wire.response().status == 400


def test_unknown_transfer_coding_refused(demo: Demo, frontend: Process, wire: Wire) -> None:
    der = good_request(demo)
    wire.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
              + chunked(der, 4096))
    reply = wire.response()
    assert reply.status in (400, 501), reply
    assert_alive(demo, frontend)
