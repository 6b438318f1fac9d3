"""Hostile HTTP framing against the running frontend: sizes and lengths, chunked bodies, ambiguous
framing, garbage, and the RFC 9112 MUSTs on Host and Transfer-Encoding.

What the frontend does, pinned here:
- HTTP-level faults get a plain-text 4xx and ``Connection: close``, then the connection is closed:
  unparseable bytes 400, body (declared or received) over max_request_bytes 413, request line +
  headers over max_header_bytes 431, a request target too long 414, POST without a length 411,
  ambiguous framing (Content-Length with Transfer-Encoding, two Content-Lengths) 400.
- Chunked POST bodies are accepted (RFC 9112 7.1) under the same size limit.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.x509 import ocsp

from frontend.config import ListenConfig
from tests.integration.conftest import Demo, Process
from tests.integration.hostile_wire import (
    Wire,
    assert_alive,
    assert_fault,
    assert_malformed,
    demo_limits,
    good_request,
    ocsp_post,
    open_wire,
)
from tests.integration.ocsp_client import random_nonce

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limits(demo: Demo) -> ListenConfig:
    return demo_limits(demo)


@pytest.fixture
def wire(demo: Demo) -> Iterator[Wire]:
    yield from open_wire(demo)


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
