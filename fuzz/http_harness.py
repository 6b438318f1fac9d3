"""The frontend's HTTP handling in-process, without sockets, for the ``http`` fuzz target: the real
``HttpProtocol`` of a real ``FrontendServer`` (one CA on an index.txt, a canned signer) is fed the
input through a recording transport, the loop runs until every answer is out, and the connection is
dropped.

The rules an input must keep (else ``Finding``): nothing is logged at ERROR or above ("unexpected
error ..."), no task fails unobserved, nothing is written after the transport's write side was
shut, the output is a sequence of whole HTTP/1.1 responses of the statuses the frontend sends
(no 500), the connection is released from the pool and no task is left running.

The input's first byte says how it is delivered: in 1..3 reads, with or without the client's EOF
after, from one of a few loopback addresses. The CA key is fixed, so saved inputs keep reaching the
same code (a request for serial 0x100 is good, 0x101 revoked, anything else unknown)."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from frontend.app import CaEntry, OcspApp, build_issuers
from frontend.cache import ResponseCache
from frontend.config import ListenConfig
from frontend.http_answer import static_headers
from frontend.http_app import FrontendServer, HttpProtocol
from frontend.signer_client import SignResult
from fuzz.checks import Finding
from shared.ocsp.types import SingleStatus
from shared.status.index_txt import IndexTxtSource

# What the frontend may answer: 100 Continue, OCSP (200; 304 revalidated), its own endpoints (404),
# and the HTTP faults it names (http_conn, http_app).
STATUSES = frozenset({100, 200, 304, 400, 404, 405, 408, 411, 413, 414, 431, 501, 503})
PEERS = (("127.0.0.1", 40000), ("127.0.0.2", 40001), ("::1", 40002, 0, 0), ("127.0.0.1", 40003))
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
MAX_LOOP_TURNS = 200  # loop iterations to let answers out; a canned signer answers in one or two

CA_KEY = ec.derive_private_key(0x5EED_F022, ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fuzz CA")])
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ca_cert() -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME)
            .public_key(CA_KEY.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=365)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(CA_KEY, hashes.SHA256()))


def leaf_cert(serial: int) -> x509.Certificate:
    """A certificate of the fuzz CA (its own key need not be fixed: a CertID hashes only the issuer)."""
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(CA_NAME).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
            .serial_number(serial).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=90)).sign(CA_KEY, hashes.SHA256()))


class CannedSigner:
    """Answers every Sign with fixed bytes at once (the HTTP layer does not look inside)."""

    async def sign(self, statuses: list[SingleStatus], nonce: bytes | None) -> SignResult:
        return SignResult(b"\x30\x03\x0a\x01\x00", 1, "fp")


class Transport(asyncio.Transport):
    """Records what the protocol writes and whatever it does against the rules."""

    def __init__(self, peer: tuple[Any, ...], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.out = bytearray()
        self.peer = peer
        self.closed = False
        self.eof = False
        self.reading = True
        self.violations: list[str] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 2560)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # asyncio raises RuntimeError for a write after write_eof; one after close() (before
        # connection_lost) it takes quietly, so that is allowed here too.
        if self.eof:
            self.violations.append(f"write of {len(data)} bytes after write_eof")
        self.out += data

    def writelines(self, items: Any) -> None:
        for item in items:
            self.write(item)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        # As asyncio's transports do: connection_lost comes on a later turn of the loop, once.
        if not self.closed and self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)
        self.closed = True

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def responses(out: bytes) -> list[int]:
    """The statuses of the whole HTTP/1.1 responses ``out`` is made of; Finding when it is not that.
    A response's body is its Content-Length, or nothing when another response or the end follows
    its head at once (a HEAD answer carries the length of the body it does not send)."""
    statuses: list[int] = []
    pos = 0
    while pos < len(out):
        m = _STATUS_LINE.match(out, pos)
        if m is None:
            raise Finding(f"output at {pos} is not a status line: {bytes(out[pos:pos + 40])!r}")
        end = out.find(b"\r\n\r\n", m.start())
        if end < 0:
            raise Finding(f"response at {pos} has no end of headers")
        head = bytes(out[m.start():end + 2]).lower()
        lengths = re.findall(rb"\r\ncontent-length: *(\d+)\r\n", head)
        status = int(m.group(1))
        if len(lengths) > 1 or (not lengths and status not in (100, 304)):
            raise Finding(f"response {status} at {pos} has {len(lengths)} Content-Length headers")
        body = int(lengths[0]) if lengths else 0
        pos = end + 4
        if body and not (pos == len(out) or _STATUS_LINE.match(out, pos)):
            pos += body
            if pos > len(out):
                raise Finding(f"response {status} is cut short")
        statuses.append(status)
    return statuses


class Harness:
    """One frontend, built once; ``check(data)`` runs one connection on it."""

    def __init__(self, directory: Path | None = None) -> None:
        """``directory``: where its index.txt goes (kept); by default a temporary one, gone at close()."""
        self.own_dir = directory is None
        self.tmp = Path(tempfile.mkdtemp(prefix="ocsp-fuzz-http-")) if directory is None else directory
        self.tmp.mkdir(parents=True, exist_ok=True)
        index = self.tmp / "index.txt"
        index.write_text("V\t301231235959Z\t\t100\tunknown\t/CN=a\n"
                         "R\t301231235959Z\t250101000000Z,keyCompromise\t101\tunknown\t/CN=b\n")
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(str(ctx.get("message"))
                                                                                     + repr(ctx.get("exception"))))
        self.errors = _Errors()
        logging.getLogger().addHandler(self.errors)
        self.listen = ListenConfig(port=0, max_request_bytes=2000, max_header_bytes=2048, max_cert_ids=4,
                                   max_connections=8, max_connections_per_client=4)
        self.server = self.loop.run_until_complete(self._make(index))
        self.turns = 0

    async def _make(self, index: Path) -> FrontendServer:
        source = IndexTxtSource("fuzz", index, timedelta(hours=1))
        source.load_now()
        der = ca_cert().public_bytes(serialization.Encoding.DER)
        app = OcspApp(issuers=build_issuers([(der, CaEntry("fuzz", source))]), signer=CannedSigner(),
                      cache=ResponseCache(64, 3600.0), listen=self.listen, stored_headers=static_headers)
        return FrontendServer(app, self.listen)

    async def _connection(self, data: bytes) -> tuple[Transport, HttpProtocol]:
        mode, payload = (data[0], data[1:]) if data else (0, b"")
        reads = 1 + mode % 3
        transport = Transport(PEERS[(mode >> 3) % len(PEERS)], asyncio.get_running_loop())
        proto = HttpProtocol(self.server)
        transport.protocol = proto
        proto.connection_made(transport)
        step = -(-len(payload) // reads) or 1
        for i in range(0, max(len(payload), 1), step):
            await self._settle(lambda: transport.reading or transport.closed)
            if transport.closed:
                break
            proto.data_received(payload[i:i + step])
        if mode & 4 and not transport.closed and not proto.eof_received():
            transport.close()  # the client's EOF, and the protocol lets the transport close
        await self._settle(lambda: transport.closed or (not proto.queue and proto.drainer is None))
        if not transport.closed:
            transport.close()  # the client goes away
        await self._settle(lambda: len(asyncio.all_tasks()) == 1)
        return transport, proto

    async def _settle(self, done: Any) -> None:
        for _ in range(MAX_LOOP_TURNS):
            if done():
                return
            await asyncio.sleep(0)
            self.turns += 1

    def check(self, data: bytes) -> None:
        self.errors.records.clear()
        self.loop_errors.clear()
        transport, proto = self.loop.run_until_complete(self._connection(data))
        if self.errors.records:
            raise Finding("logged: " + " | ".join(self.errors.records))
        if self.loop_errors:
            raise Finding("loop: " + " | ".join(self.loop_errors))
        if transport.violations:
            raise Finding("; ".join(transport.violations))
        left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        if left:
            raise Finding(f"{len(left)} tasks left running: {left[0]!r}")
        if self.server.connections or proto.client is not None:
            raise Finding("the connection was not released from the pool")
        bad = [s for s in responses(bytes(transport.out)) if s not in STATUSES]
        if bad:
            raise Finding(f"answered HTTP {bad[0]}")

    def close(self) -> None:
        logging.getLogger().removeHandler(self.errors)
        self.loop.close()
        if self.own_dir:
            shutil.rmtree(self.tmp, ignore_errors=True)
