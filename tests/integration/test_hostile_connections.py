"""Many requests and many or slow connections against the running frontend: 100 requests of every
kind pipelined in one write, 300 idle connections, and slow clients.

A connection that sends nothing is closed after listen.idle_timeout; one that trickles its
request gets 408 after listen.request_timeout.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from frontend.config import load_frontend_config
from tests.integration.conftest import Demo, Process, free_port, http_healthy, tool
from tests.integration.hostile_wire import (
    HOST,
    Reply,
    Wire,
    assert_alive,
    assert_malformed,
    good_request,
    ocsp_get,
    ocsp_post,
    open_wire,
)
from tests.integration.ocsp_client import load_cert, random_nonce

pytestmark = pytest.mark.integration


@pytest.fixture
def wire(demo: Demo) -> Iterator[Wire]:
    yield from open_wire(demo)


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
