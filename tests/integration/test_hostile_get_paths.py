"""Hostile GET request targets: control and non-ASCII bytes (400 and close, or malformedRequest),
percent-encoded NUL, and paths that do not carry an OCSPRequest (bad base64, broken
percent-encoding, DER that is not an OCSPRequest): HTTP 200 with the unsigned malformedRequest
OCSP response (RFC 6960 2.3), not cacheable; the connection stays usable."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Demo, Process
from tests.integration.hostile_wire import Wire, assert_alive, assert_malformed, open_wire

pytestmark = pytest.mark.integration


@pytest.fixture
def wire(demo: Demo) -> Iterator[Wire]:
    yield from open_wire(demo)


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
