"""Well-formed HTTP messages a client may use to confuse the frontend: HTTP/1.0, Connection: close
followed by more requests, Expect: 100-continue, HEAD, other methods, Upgrade and CONNECT. Each
request gets exactly one final response, and nothing after a close."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process
from tests.integration.hostile_wire import Wire, assert_alive, good_request, ocsp_get, open_wire

pytestmark = pytest.mark.integration


@pytest.fixture
def wire(demo: Demo) -> Iterator[Wire]:
    yield from open_wire(demo)


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
