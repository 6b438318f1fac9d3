"""Hostile OCSP DER in well-framed requests: too many CertIDs, and SEQUENCEs nested as deep as the
byte limit allows (definite and indefinite lengths), by POST and by GET. Within the size limit
they are parsed and refused quickly with malformedRequest; past it, refused by size."""

from __future__ import annotations

import time

import pytest
from cryptography.x509 import ocsp

from frontend.config import ListenConfig
from tests.integration.conftest import Demo, Process
from tests.integration.hostile_wire import (
    MALFORMED,
    Wire,
    assert_alive,
    assert_fault,
    assert_malformed,
    demo_limits,
    ocsp_get,
)
from tests.integration.ocsp_client import build_multi_request, load_cert, post

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limits(demo: Demo) -> ListenConfig:
    return demo_limits(demo)


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
