"""Raw-socket tools for the test_hostile_* modules, which send hostile HTTP and DER to the running
frontend over raw sockets to 127.0.0.1 only.

Every exchange is bounded: each socket operation has a deadline, every loop a count. After each
test the frontend process must still be alive and still answer an ordinary OCSP request
(``assert_alive``).
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.x509 import ocsp

from frontend.config import ListenConfig, load_frontend_config
from tests.integration.conftest import Demo, Process
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce

HOST = "127.0.0.1"
MALFORMED = bytes.fromhex("30030a0101")  # OCSPResponse { responseStatus malformedRequest }


def demo_limits(demo: Demo) -> ListenConfig:
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


def open_wire(demo: Demo) -> Iterator[Wire]:
    """The body of the ``wire`` fixture: one connection to the demo frontend, closed after the test."""
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
