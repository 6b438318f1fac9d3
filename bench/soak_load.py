"""The soak's clients and its oracle (bench/soak.py runs them): what each CA's status data says, the
valid requests (checked answer by answer) and the invalid ones (each expecting its own refusal).

``World`` is the oracle. It reads the demo CAs' status files itself (index.txt; issued.txt and the
CRL), apart from the responder's parsers, and knows which serials are changing: during a change a
serial may answer its old or its new status, and a tryLater for that serial is counted apart
("window errors"), not as a failure (until both halves have loaded the change they may disagree
about it). Any other serial must be answered throughout.
Outside a window an answer must be exactly what the files say.

A valid answer must be HTTP 200 application/ocsp-response, a successful OCSP response whose
signature verifies with a responder certificate the CA issued (tests/integration/ocsp_client), for
the CertID asked (issuer hashes and serial), with the nonce echoed exactly when one was sent, a
thisUpdate not in the future and a nextUpdate ahead, and the status the data gives.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import HashAlgorithm
from tests.integration.ocsp_client import load_cert, response_nonce, verify_basic

HASHES = {HashAlgorithm.SHA1: hashes.SHA1(), HashAlgorithm.SHA256: hashes.SHA256()}
STATUS_NAMES = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked",
                ocsp.OCSPCertStatus.UNKNOWN: "unknown"}
IO_TIMEOUT = 15.0  # seconds an answer may take before the request counts as failed
SKEW = timedelta(seconds=5)


# -- the oracle --------------------------------------------------------------------------------------


@dataclass
class Ca:
    """One demo CA as the soak sees it: its files, its issuer hashes and what its data says."""

    name: str  # the ca.d name (demo-rsa)
    dir: Path
    source: str  # "index" | "crl"
    issuer: x509.Certificate
    keys: dict[HashAlgorithm, tuple[bytes, bytes]] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)  # serial -> good | revoked (absent: unknown)
    changing: dict[int, tuple[frozenset[str], float]] = field(default_factory=dict)  # -> (allowed, until)
    leaves: list[int] = field(default_factory=list)  # serials of the demo's leaf certificates

    def read(self) -> None:
        """What the CA's files say now."""
        status: dict[int, str] = {}
        if self.source == "index":
            for line in (self.dir / "index.txt").read_text().split("\n"):
                parts = line.split("\t")
                if len(parts) == 6:
                    status[int(parts[3], 16)] = "revoked" if parts[0] == "R" else "good"
        else:
            for word in (self.dir / "issued.txt").read_text().split():
                status[int(word, 16)] = "good"
            crl = x509.load_pem_x509_crl((self.dir / "crl.pem").read_bytes())
            for entry in crl:
                status[entry.serial_number] = "revoked"
        self.status = status

    def expected(self, serial: int, now: float) -> frozenset[str]:
        """The statuses an answer for ``serial`` may carry at ``now``."""
        window = self.changing.get(serial)
        if window is not None and now < window[1]:
            return window[0]
        return frozenset({self.status.get(serial, "unknown")})

    def in_window(self, serial: int, now: float) -> bool:
        """``serial``'s status is changing at ``now``: until the frontend and the signer have both
        loaded the change they may disagree about it, and the frontend answers tryLater for it. Only
        for it: the serials a change leaves alone are signed throughout, a new CRL's moved thisUpdate
        included (the signer still signs the replaced CRL's window for them, signer.status_check)."""
        window = self.changing.get(serial)
        return window is not None and now < window[1]


def load_ca(name: str, ca_dir: Path, source: str) -> Ca:
    issuer = load_cert(ca_dir / "ca.pem")
    der = issuer.public_bytes(serialization.Encoding.DER)
    keys = {alg: (k.issuer_name_hash, k.issuer_key_hash) for alg, k in issuer_keys(der).items() if alg in HASHES}
    leaves = sorted(load_cert(p).serial_number for p in ca_dir.glob("leaf-*.pem"))
    ca = Ca(name, ca_dir, source, issuer, keys, leaves=leaves)
    ca.read()
    return ca


# -- HTTP ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    close: bool


async def read_reply(reader: asyncio.StreamReader, head_only: bool = False) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get(b"content-length", b"0"))
    body = b"" if head_only else await reader.readexactly(n)
    return Reply(status, headers, body, headers.get(b"connection", b"").lower() == b"close")


def post_bytes(body: bytes, content_type: bytes = b"application/ocsp-request") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def get_bytes(der: bytes, urlsafe: bool = False) -> bytes:
    text = base64.urlsafe_b64encode(der).rstrip(b"=").decode() if urlsafe else \
        urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    return b"GET /" + text.encode() + b" HTTP/1.1\r\nHost: soak\r\n\r\n"


def build(ca: Ca, serial: int, alg: HashAlgorithm = HashAlgorithm.SHA1, nonce: bytes | None = None,
          keys: tuple[bytes, bytes] | None = None) -> bytes:
    name_hash, key_hash = keys or ca.keys[alg]
    b = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, HASHES[alg])
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


# -- the checks -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the soak counts (printed by bench/soak.py)."""

    kinds: Counter[str] = field(default_factory=Counter)  # requests sent, by kind
    failed: Counter[str] = field(default_factory=Counter)  # valid requests without a valid answer
    wrong: Counter[str] = field(default_factory=Counter)  # answers that contradict the data or the rules
    window_errors: int = 0  # tryLater answers for a serial inside its change window (allowed)
    latencies: list[float] = field(default_factory=list)  # seconds, of the valid requests answered
    half_closed: Counter[str] = field(default_factory=Counter)  # "answered" | "closed" (no answer)
    notes: list[str] = field(default_factory=list)  # the first few failures, for the report

    def note(self, what: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(f"{time.strftime('%H:%M:%S')} {what}")


def check_answer(tally: Tally, ca: Ca, serial: int, nonce: bytes | None, reply: Reply, kind: str,
                 sent_at: float) -> None:
    """One valid request's answer, against the rules and the data (see the module docstring)."""
    if reply.status != 200 or reply.headers.get(b"content-type") != b"application/ocsp-response":
        tally.failed[kind] += 1
        tally.note(f"{kind} {ca.name} {serial:X}: HTTP {reply.status} {reply.body[:60]!r}")
        return
    try:
        resp = ocsp.load_der_ocsp_response(reply.body)
    except ValueError as e:
        tally.wrong[kind] += 1
        tally.note(f"{kind} {ca.name} {serial:X}: unparseable response: {e}")
        return
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        if resp.response_status == ocsp.OCSPResponseStatus.TRY_LATER and (
                ca.in_window(serial, time.monotonic()) or ca.in_window(serial, sent_at)):
            tally.window_errors += 1
            return
        tally.failed[kind] += 1
        tally.note(f"{kind} {ca.name} {serial:X}: OCSP {resp.response_status.name}")
        return
    problem = _problem(resp, ca, serial, nonce)
    if problem is None:
        got = STATUS_NAMES[resp.certificate_status]
        allowed = ca.expected(serial, sent_at) | ca.expected(serial, time.monotonic())
        if got not in allowed:
            problem = f"status {got}, the data says {'/'.join(sorted(allowed))}"
    if problem is not None:
        tally.wrong[kind] += 1
        tally.note(f"{kind} {ca.name} {serial:X}: {problem}")


def _problem(resp: ocsp.OCSPResponse, ca: Ca, serial: int, nonce: bytes | None) -> str | None:
    try:
        verify_basic(resp, ca.issuer)
    except Exception as e:  # noqa: BLE001 - any failure of the relying party's checks is the finding
        return f"does not verify: {type(e).__name__} {e}"
    if resp.serial_number != serial:
        return f"answers serial {resp.serial_number:X}"
    alg = HashAlgorithm.SHA256 if isinstance(resp.hash_algorithm, hashes.SHA256) else HashAlgorithm.SHA1
    if (resp.issuer_name_hash, resp.issuer_key_hash) != ca.keys[alg]:
        return "answers another issuer"
    if response_nonce(resp) != nonce:
        return f"nonce {response_nonce(resp)!r}, sent {nonce!r}"
    now = datetime.now(UTC)
    if resp.this_update_utc > now + SKEW:
        return f"thisUpdate {resp.this_update_utc} is in the future"
    if resp.next_update_utc is None or resp.next_update_utc <= now:
        return f"nextUpdate {resp.next_update_utc} is not ahead"
    return None


# -- the clients -------------------------------------------------------------------------------------------


class Load:
    """The soak's clients on the frontend at 127.0.0.1:``port``, until ``stop`` is set."""

    def __init__(self, port: int, cas: list[Ca], tally: Tally, max_request_bytes: int, seed: int) -> None:
        self.port = port
        self.cas = cas
        self.tally = tally
        self.max_request_bytes = max_request_bytes
        self.rng = random.Random(seed)
        self.stop = asyncio.Event()
        self.extra: dict[str, list[int]] = {ca.name: [] for ca in cas}  # serials the soak added

    def pick(self) -> tuple[Ca, int]:
        ca = self.rng.choice(self.cas)
        r = self.rng.random()
        extra = self.extra[ca.name]
        if extra and r < 0.3:
            return ca, self.rng.choice(extra[-4:])
        if r < 0.9:
            return ca, self.rng.choice(ca.leaves)
        return ca, self.rng.randrange(1, 1 << 64)  # never issued: unknown

    async def valid_client(self) -> None:
        reader = writer = None
        while not self.stop.is_set():
            ca, serial = self.pick()
            nonce = os.urandom(16) if self.rng.random() < 0.5 else None
            alg = HashAlgorithm.SHA256 if self.rng.random() < 0.2 else HashAlgorithm.SHA1
            der = build(ca, serial, alg, nonce)
            method = "post" if self.rng.random() < 0.5 else "get"
            kind = f"valid {method}{' nonce' if nonce else ''}"
            wire = post_bytes(der) if method == "post" else get_bytes(der, urlsafe=self.rng.random() < 0.5)
            self.tally.kinds[kind] += 1
            sent_at = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                                            IO_TIMEOUT)
                assert reader is not None
                writer.write(wire)
                reply = await asyncio.wait_for(read_reply(reader), IO_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                self.tally.failed[kind] += 1
                self.tally.note(f"{kind} {ca.name} {serial:X}: {type(e).__name__} {e}")
                writer = _close(writer)
                continue
            self.tally.latencies.append(time.monotonic() - sent_at)
            check_answer(self.tally, ca, serial, nonce, reply, kind, sent_at)
            if reply.close:
                writer = _close(writer)
        _close(writer)

    async def invalid_client(self) -> None:
        kinds = [self._garbage, self._truncated, self._oversized, self._bad_get, self._unknown_issuer,
                 self._wrong_content_type, self._bad_http, self._half_closed, self._slow]
        i = 0
        while not self.stop.is_set():
            await self._one(kinds[i % len(kinds)])
            i += 1
            await asyncio.sleep(0.02)  # pacing, not synchronisation: invalid traffic is a minority

    async def stalled_client(self, every: float) -> None:
        """A request that never finishes its headers, now and then: it must get 408 (request_timeout)."""
        while not self.stop.is_set():
            await self._one(self._stalled)
            try:
                await asyncio.wait_for(self.stop.wait(), every)
            except TimeoutError:
                pass

    async def _one(self, kind_fn) -> None:  # type: ignore[no-untyped-def]
        kind = "invalid " + kind_fn.__name__.strip("_").replace("_", " ")
        self.tally.kinds[kind] += 1
        try:
            problem = await asyncio.wait_for(kind_fn(), 40)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            problem = f"{type(e).__name__} {e}"
        if problem:
            self.tally.wrong[kind] += 1
            self.tally.note(f"{kind}: {problem}")

    async def _exchange(self, wire: bytes, *, half_close: bool = False) -> Reply:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), IO_TIMEOUT)
        try:
            writer.write(wire)
            if half_close:
                writer.write_eof()
            return await asyncio.wait_for(read_reply(reader), IO_TIMEOUT)
        finally:
            _close(writer)

    async def _ocsp_error(self, wire: bytes, want: ocsp.OCSPResponseStatus) -> str | None:
        reply = await self._exchange(wire)
        if reply.status != 200:
            return f"HTTP {reply.status}"
        got = ocsp.load_der_ocsp_response(reply.body).response_status
        return None if got == want else f"OCSP {got.name}, want {want.name}"

    async def _garbage(self) -> str | None:
        return await self._ocsp_error(post_bytes(self.rng.randbytes(self.rng.randrange(1, 300))),
                                      ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    async def _truncated(self) -> str | None:
        ca, serial = self.pick()
        der = build(ca, serial, nonce=os.urandom(16))
        return await self._ocsp_error(post_bytes(der[:self.rng.randrange(1, len(der))]),
                                      ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    async def _oversized(self) -> str | None:
        reply = await self._exchange(post_bytes(b"\x30" * (self.max_request_bytes + 1)))
        return None if reply.status == 413 else f"HTTP {reply.status}, want 413"

    async def _bad_get(self) -> str | None:
        problem = await self._ocsp_error(b"GET /not*base64! HTTP/1.1\r\nHost: soak\r\n\r\n",
                                         ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if problem:
            return problem
        reply = await self._exchange(b"GET /-/nothing-here HTTP/1.1\r\nHost: soak\r\n\r\n")
        return None if reply.status == 404 else f"/-/nothing-here: HTTP {reply.status}, want 404"

    async def _unknown_issuer(self) -> str | None:
        ca, serial = self.pick()
        der = build(ca, serial, keys=(os.urandom(20), os.urandom(20)))
        return await self._ocsp_error(post_bytes(der), ocsp.OCSPResponseStatus.UNAUTHORIZED)

    async def _wrong_content_type(self) -> str | None:
        """The frontend does not look at Content-Type: the request is answered, and rightly."""
        ca, serial = self.pick()
        sent_at = time.monotonic()
        reply = await self._exchange(post_bytes(build(ca, serial), b"text/plain"))
        check_answer(self.tally, ca, serial, None, reply, "invalid wrong content type", sent_at)  # counts
        return None

    async def _bad_http(self) -> str | None:
        reply = await self._exchange(b"BREW / HTCPCP/1.0\r\n\r\n")
        return None if reply.status == 400 else f"HTTP {reply.status}, want 400"

    async def _half_closed(self) -> str | None:
        """A request, then the client's FIN (HTTP/1.1 allows a half-close): answered, then closed."""
        ca, serial = self.pick()
        sent_at = time.monotonic()
        try:
            reply = await self._exchange(post_bytes(build(ca, serial)), half_close=True)
        except asyncio.IncompleteReadError as e:
            self.tally.half_closed["closed"] += 1
            return f"closed without an answer{f' (cut: {e.partial[:40]!r})' if e.partial else ''}"
        self.tally.half_closed["answered"] += 1
        check_answer(self.tally, ca, serial, None, reply, "invalid half closed", sent_at)
        return None

    async def _slow(self) -> str | None:
        """A request dribbled in three parts, well within request_timeout: answered normally."""
        ca, serial = self.pick()
        wire = post_bytes(build(ca, serial))
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), IO_TIMEOUT)
        sent_at = time.monotonic()
        try:
            for k in range(3):
                writer.write(wire[k * len(wire) // 3:(k + 1) * len(wire) // 3])
                await writer.drain()
                await asyncio.sleep(0.2)
            reply = await asyncio.wait_for(read_reply(reader), IO_TIMEOUT)
        finally:
            _close(writer)
        check_answer(self.tally, ca, serial, None, reply, "invalid slow", sent_at)
        return None

    async def _stalled(self) -> str | None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), IO_TIMEOUT)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Le")
            reply = await asyncio.wait_for(read_reply(reader), 35)
        finally:
            _close(writer)
        return None if reply.status == 408 else f"HTTP {reply.status}, want 408"


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
