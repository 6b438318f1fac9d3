"""The HTTP shell: an asyncio.Protocol driving httptools, and the OCSP request pipeline.

Per request:

    key (b"P" + POST body / b"G" + GET target) -> cache hit? -> answer at once (no ASN.1 parsing)
    miss: decode_request -> issuers known, one CA, hash allowed -> that CA's status snapshot
          -> signer Sign (typed fields) -> cache store (no nonce) -> answer

Any ``OCSPError`` becomes HTTP 200 with the unsigned OCSP error response of its status; anything
else becomes internalError with a logged traceback. HTTP faults (unparseable request, oversized
body or headers, wrong method) get a plain HTTP error and, where the stream can no longer be
trusted, the connection is closed.

HTTP/1.1 keep-alive and pipelining: answers leave in request order. A cache hit with nothing
queued before it is written from ``data_received`` directly; everything else goes through a
per-connection queue drained by one task. HTTP/1.0 requests are answered and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import httptools

from frontend.cache import Entry, ResponseCache
from frontend.config import ListenConfig
from frontend.readiness import READY_PATH, Readiness
from frontend.signer_client import SignResult
from frontend.status.base import FileStatusSource
from shared.clock import Clock, SystemClock
from shared.ocsp import http as ohttp
from shared.ocsp.certid import IssuerIndex
from shared.ocsp.errors import InternalError, OCSPError, TryLater, Unauthorized
from shared.ocsp.request import decode_request
from shared.ocsp.response import error_response
from shared.ocsp.types import IssuerKey, ResponseStatus, SingleStatus

log = logging.getLogger("frontend.server")

HEALTH_PATH = b"/-/health"
CRLF = b"\r\n"
_CT_OCSP = b"Content-Type: application/ocsp-response\r\n"
_NO_CACHE = ("Cache-Control: " + ohttp.NOT_CACHEABLE + "\r\n").encode()
_CC_TAIL = (", " + ohttp.CACHEABLE_DIRECTIVES + "\r\n").encode()
_REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 411: b"Length Required",
            413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, text) for code, text in _REASONS.items()}


class Signer(Protocol):
    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult: ...


class CaEntry:
    """One configured CA as the server sees it: its name and its status source."""

    __slots__ = ("name", "source")

    def __init__(self, name: str, source: FileStatusSource) -> None:
        self.name = name
        self.source = source


# -- Date header, formatted once per second ------------------------------------------------------------

_date_sec = -1
_date_line = b""


def date_line(now: float | None = None) -> bytes:
    global _date_sec, _date_line
    sec = int(time.time() if now is None else now)
    if sec != _date_sec:
        _date_line = b"Date: " + ohttp.http_date(sec).encode() + CRLF
        _date_sec = sec
    return _date_line


class _RateLimitedLog:
    """At most one log line per ``interval`` seconds per key (a dead signer must not flood logs)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            self._last[key] = now
            log.log(level, msg, *args)


# -- the OCSP pipeline -----------------------------------------------------------------------------------


class _Flight:
    """A signature in progress that identical requests may wait for instead of signing again."""

    __slots__ = ("future", "ca")

    def __init__(self, future: asyncio.Future[tuple[bytes, bytes]]) -> None:
        self.future = future
        self.ca: str | None = None  # set once the request is decoded


class OcspApp:
    """HTTP-free request handling: bytes in, (body, header lines) out."""

    def __init__(self, *, issuers: IssuerIndex[CaEntry], signer: Signer, cache: ResponseCache,
                 listen: ListenConfig, clock: Clock | None = None) -> None:
        self.issuers = issuers
        self.signer = signer
        self.cache = cache
        self.listen = listen
        self.clock = clock or SystemClock()
        self.allowed_hashes = frozenset(listen.allowed_hashes)
        self.max_age_cap = int(cache.max_age)
        self.prefix = listen.path_prefix.encode()
        self._inflight: dict[bytes, _Flight] = {}
        self._ratelog = _RateLimitedLog()
        for ca in issuers.values():
            ca.source.on_change(self._source_changed)

    def _source_changed(self, source: FileStatusSource) -> None:
        self.cache.invalidate(source.name)
        # Signatures in flight for this CA were made from the old data: requests arriving from
        # now on must not join them, they start their own.
        for key in [k for k, f in self._inflight.items() if f.ca == source.name]:
            del self._inflight[key]

    # cache hit: header lines for an entry
    def hit_headers(self, entry: Entry, now: float) -> bytes:
        age = entry.next_update - int(now)
        if age > self.max_age_cap:
            age = self.max_age_cap
        if age < 0:
            age = 0
        return b"Cache-Control: max-age=%d%s%s" % (age, _CC_TAIL, entry.headers)

    @staticmethod
    def error_answer(status: ResponseStatus) -> tuple[bytes, bytes]:
        body = error_response(status)
        return body, _CT_OCSP + b"Content-Length: %d\r\n" % len(body) + _NO_CACHE

    async def answer(self, der: bytes, key: bytes | None) -> tuple[bytes, bytes]:
        """Answer one request; concurrent identical nonce-less requests share one signature, as long
        as the CA's status data has not been reloaded since that signature was started."""
        if key is None:
            return await self._answer(der, None)
        flight = self._inflight.get(key)
        if flight is not None:
            fut = flight.future
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    # The request we waited on was abandoned (its client went away): do our own.
                    return await self._answer(der, None)
                raise
        flight = _Flight(asyncio.get_running_loop().create_future())
        self._inflight[key] = flight
        fut = flight.future
        try:
            result = await self._answer(der, key, flight)
            fut.set_result(result)
            return result
        finally:
            # Only cancellation leaves without a result (_answer catches everything else).
            if not fut.done():
                fut.cancel()
            self._unshare(key, flight)

    def _unshare(self, key: bytes, flight: _Flight) -> None:
        """No later request joins ``flight`` (a reload may have put a newer one under ``key``)."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    async def _answer(self, der: bytes, key: bytes | None, flight: _Flight | None = None) -> tuple[bytes, bytes]:
        try:
            return await self._answer_or_raise(der, key, flight)
        except OCSPError as e:
            if isinstance(e, TryLater):
                self._ratelog(logging.WARNING, "trylater", "answering tryLater: %s", e)
            elif isinstance(e, InternalError):
                self._ratelog(logging.ERROR, "internal", "answering internalError: %s", e)
            else:
                log.debug("answering %s: %s", e.status.name, e)
            return self.error_answer(e.status)
        except Exception:  # noqa: BLE001 - a bug must cost one internalError answer, not the connection
            log.exception("unexpected error answering a request")
            return self.error_answer(ResponseStatus.INTERNAL_ERROR)

    async def _answer_or_raise(self, der: bytes, key: bytes | None,
                               flight: _Flight | None = None) -> tuple[bytes, bytes]:
        request = decode_request(der, max_cert_ids=self.listen.max_cert_ids)
        ca: CaEntry | None = None
        for cid in request.cert_ids:
            if cid.hash_algorithm not in self.allowed_hashes:
                raise Unauthorized(f"CertID hash {cid.hash_algorithm.value} is not served")
            found = self.issuers.get(IssuerKey.of(cid))
            if found is None:
                raise Unauthorized("CertID names an issuer this responder does not serve")
            if ca is None:
                ca = found
            elif found is not ca:
                raise Unauthorized(f"one request names two CAs ({ca.name}, {found.name})")
        assert ca is not None  # decode_request rejects an empty requestList
        if flight is not None and key is not None:
            # Everything up to the Sign call runs without yielding, so no request has joined yet.
            if request.nonce is not None:
                self._unshare(key, flight)  # each nonce-bearing request gets its own signature
            else:
                flight.ca = ca.name  # a reload of this CA's data detaches it (_source_changed)
        source = ca.source
        generation = source.generation
        snapshot = source.current()
        now = self.clock.now()
        this_update, next_update = snapshot.window(now)
        statuses = []
        for cid in request.cert_ids:
            info = snapshot.status(cid.serial_int)
            statuses.append(SingleStatus(cert_id=cid, status=info.status, this_update=this_update,
                                         next_update=next_update, revocation=info.revocation))
        result = await self.signer.sign(statuses, request.nonce)
        body = result.der
        # Every reply, nonce or not, tells which responder generation signs for this CA now.
        self.cache.note_generation(ca.name, result.generation, signer=result.signer)
        if request.nonce is not None:
            return body, _CT_OCSP + b"Content-Length: %d\r\n" % len(body) + _NO_CACHE
        tu, nu = int(this_update.timestamp()), int(next_update.timestamp())
        static = (_CT_OCSP + b"Content-Length: %d\r\n" % len(body)
                  + b"".join(f"{k}: {v}\r\n".encode() for k, v in ohttp.validator_headers(body, tu, nu)))
        if key is not None and source.generation == generation:
            self.cache.put(key, body, static, ca=ca.name, this_update=tu, next_update=nu,
                           generation=result.generation, signer=result.signer)
        entry = Entry(body, static, 0.0, nu, ca.name)
        return body, self.hit_headers(entry, self.cache.clock())


# -- HTTP ------------------------------------------------------------------------------------------------


def http_response(status: int, header_lines: bytes, body: bytes, *, close: bool, head: bool = False,
                  now: float | None = None) -> bytes:
    out = _STATUS_LINES[status] + date_line(now) + header_lines
    if close:
        out += b"Connection: close\r\n"
    out += CRLF
    return out if head else out + body


def etag_matches(if_none_match: bytes, der: bytes) -> bool:
    """If-None-Match against our strong ETag, with the weak comparison RFC 9110 13.1.2 asks for."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    ours = ohttp.etag(der).encode()
    for tag in value.split(b","):
        tag = tag.strip()
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag == ours:
            return True
    return False


def plain(status: int, text: str, *, close: bool, head: bool = False, extra: bytes = b"") -> bytes:
    body = text.encode()
    headers = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
               + _NO_CACHE + extra)
    return http_response(status, headers, body, close=close, head=head)


class _Reject(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


_MAX_PIPELINE = 32
_MAX_RUNNING = 8  # answers of one connection being worked on (signed) at the same time
_FEED_SLICE = 16384  # bytes handed to the parser at once (see data_received)
LINGER = 2.0  # seconds a closing connection keeps draining the client's input


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: FrontendServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[bytes | asyncio.Task[bytes], bool]] = deque()
        self.drainer: asyncio.Task[None] | None = None
        # One read can hold hundreds of pipelined requests: each gets its task (answers stay in
        # order), but at most _MAX_RUNNING of them run (and call the signer) at once.
        self.running: asyncio.Semaphore | None = None
        self.closing = False
        self.paused = False
        self.write_paused = False
        self.deadline = 0.0
        self.headers_done = False  # the current message's head has been parsed
        self.head_raw = 0  # raw bytes fed since the last message ended, while its head was incomplete
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect_continue = False
        self.hosts = 0
        self.if_none_match: bytes | None = None
        self.in_message = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.deadline = self.loop.time() + self.server.listen.idle_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        for item, _ in self.queue:
            if isinstance(item, asyncio.Task):
                item.cancel()
        self.queue.clear()
        if self.drainer is not None:
            self.drainer.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.in_message:
            self.deadline = self.loop.time() + self.server.listen.request_timeout
        try:
            # httptools collects a header name or value itself and calls on_header only once it is
            # complete, so on_header's count alone would let one endless header value through (and
            # copy it quadratically). So the raw bytes fed while a message's head is incomplete are
            # counted here, before the parser sees them, and fed in slices: past max_head -> 431.
            # (Bytes of a pipelined message's head in the slice where the previous message ends
            # are not counted, so a head may exceed max_head by at most one slice.)
            n = len(data)
            pos = 0
            while pos < n:
                if self.headers_done:
                    take = _FEED_SLICE
                else:
                    room = self.server.max_head - self.head_raw
                    if room <= 0:
                        self._fail(431, "request headers too large\n")
                        return
                    take = room if room < _FEED_SLICE else _FEED_SLICE
                    self.head_raw += min(take, n - pos)
                chunk = data if pos == 0 and take >= n else data[pos:pos + take]
                pos += len(chunk)
                self.parser.feed_data(chunk)
                if self.closing:
                    return
        except httptools.HttpParserUpgrade:
            if self.closing:
                return
            # The request itself was answered (on_message_complete ran); we do not switch
            # protocols (RFC 9110 7.8 lets a server ignore Upgrade), and the bytes after it are
            # not HTTP/1.1, so close once the answers already queued are out.
            if self.in_message:
                self._fail(400, "protocol upgrade is not supported\n")
            else:
                self._push(b"", True)
                self.closing = True
        except httptools.HttpParserError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.status, cause.text)
            else:
                self._fail(400, "bad HTTP request\n")
        except Exception:  # noqa: BLE001 - a bug here must cost this connection, not the server
            log.exception("unexpected error reading a request")
            if self.transport is not None:
                self.transport.close()

    # -- httptools callbacks ---------------------------------------------------------------------------
    # Once a message decided to close the connection, llhttp still parses whatever followed it in
    # the same read: every callback ignores that (no answer, no task, no write after write_eof).
    def on_message_begin(self) -> None:
        if self.closing:
            return
        self._reset()
        self.in_message = True
        self.deadline = self.loop.time() + self.server.listen.request_timeout

    def on_url(self, url: bytes) -> None:
        if self.closing:
            return
        self.url += url
        if len(self.url) > self.server.max_url:
            raise _Reject(414, "request target too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.closing:
            return
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.server.listen.max_header_bytes:
            raise _Reject(431, "request headers too large\n")
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            self.content_length = value
        elif n == 17 and name.lower() == b"transfer-encoding":
            if value.strip().lower() != b"chunked":  # RFC 9112 6.1: a coding we do not implement
                raise _Reject(501, "only the chunked transfer coding is supported\n")
            self.chunked = True
        elif n == 4 and name.lower() == b"host":
            self.hosts += 1
        elif n == 13 and name.lower() == b"if-none-match":
            self.if_none_match = value
        elif n == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        self.headers_done = True
        if self.hosts > 1 or (self.hosts == 0 and self.parser.get_http_version() == "1.1"):
            raise _Reject(400, "an HTTP/1.1 request needs exactly one Host header\n")  # RFC 9112 3.2
        if self.content_length is not None:
            try:
                length = int(self.content_length)
            except ValueError:
                raise _Reject(400, "bad Content-Length\n") from None
            if length > self.server.listen.max_request_bytes:
                raise _Reject(413, f"request body larger than {self.server.listen.max_request_bytes} bytes\n")
        if self.expect_continue and not self.queue and self.transport is not None:
            # curl and others wait for this before sending a body over 1 KB. (With answers still
            # queued it cannot go out in order; such a client sends the body after its own timeout.)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.body_len += len(body)
        if self.body_len > self.server.listen.max_request_bytes:
            raise _Reject(413, f"request body larger than {self.server.listen.max_request_bytes} bytes\n")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.in_message = False
        self.headers_done = False
        self.head_raw = 0
        parser = self.parser
        method = parser.get_method()
        close = not parser.should_keep_alive() or parser.get_http_version() != "1.1"
        try:
            self._dispatch(method, close)
        except Exception:  # noqa: BLE001 - never drop a connection over a bug
            log.exception("unexpected error dispatching a request")
            body, headers = OcspApp.error_answer(ResponseStatus.INTERNAL_ERROR)
            self._push(http_response(200, headers, body, close=close), close)
        if close:
            self.closing = True

    # -- routing ---------------------------------------------------------------------------------------
    def _dispatch(self, method: bytes, close: bool) -> None:
        app = self.app
        if method == b"POST":
            if self.content_length is None and not self.chunked:
                self._push(plain(411, "Content-Length required\n", close=True), True)
                self.closing = True
                return
            target = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            # Cache keys say what they are: a POST body that spells a GET target is not that GET.
            key = b"P" + target
            head = False
        elif method == b"GET" or method == b"HEAD":
            head = method == b"HEAD"
            target = ohttp.origin_form(self.url)
            key = b"G" + target  # HEAD shares GET's answers
            if target.startswith(b"/-/"):  # our own endpoints; '-' never starts a base64 DER request
                path = target.split(b"?", 1)[0]
                if path == HEALTH_PATH:
                    self._push(plain(200, "ok\n", close=close, head=head), close)
                elif path == READY_PATH and self.server.readiness is not None:
                    status, text = self.server.readiness.answer()  # a kept verdict (frontend.readiness)
                    self._push(plain(status, text, close=close, head=head), close)
                else:
                    self._push(plain(404, "not found\n", close=close, head=head), close)
                return
            if not target.startswith(app.prefix):
                path = target.split(b"?", 1)[0]
                if path + b"/" == app.prefix:
                    self._ocsp_error(ResponseStatus.MALFORMED_REQUEST, close, head)
                else:
                    self._push(plain(404, "not found\n", close=close, head=head), close)
                return
        else:
            self._push(plain(405, "only GET, HEAD and POST\n", close=close,
                             extra=b"Allow: GET, HEAD, POST\r\n"), close)
            return

        now = app.cache.clock()
        entry = app.cache.get(key, now)
        if entry is not None:
            if self.if_none_match is not None and method != b"POST" and etag_matches(self.if_none_match, entry.der):
                # A cache revalidating what it holds (RFC 9110 13.1.2): headers, no body.
                data = http_response(304, app.hit_headers(entry, now), b"", close=close, head=True, now=now)
            else:
                data = http_response(200, app.hit_headers(entry, now), entry.der, close=close, head=head, now=now)
            self._push(data, close)
            return

        if method == b"POST":
            der = target
        else:
            try:
                der = ohttp.request_from_path(target, self.server.listen.path_prefix,
                                              max_bytes=self.server.listen.max_request_bytes)
            except OCSPError as e:
                self._ocsp_error(e.status, close, head)
                return
        task = self.loop.create_task(self._answer(der, key, close, head))
        self._push(task, close)

    async def _answer(self, der: bytes, key: bytes, close: bool, head: bool) -> bytes:
        running = self.running
        if running is None:
            running = self.running = asyncio.Semaphore(_MAX_RUNNING)
        async with running:
            body, headers = await self.app.answer(der, key)
        return http_response(200, headers, body, close=close, head=head)

    def _ocsp_error(self, status: ResponseStatus, close: bool, head: bool) -> None:
        body, headers = OcspApp.error_answer(status)
        self._push(http_response(200, headers, body, close=close, head=head), close)

    def _fail(self, status: int, text: str) -> None:
        """An HTTP-level fault: answer after what is queued, then close."""
        if self.closing:
            return
        self._push(plain(status, text, close=True), True)
        self.closing = True

    # -- ordered output --------------------------------------------------------------------------------
    def _push(self, item: bytes | asyncio.Task[bytes], close: bool) -> None:
        transport = self.transport
        if transport is None:
            if isinstance(item, asyncio.Task):
                item.cancel()
            return
        if not self.queue and isinstance(item, bytes):
            if item:
                transport.write(item)
            if close:
                self._linger_close(transport)
            else:
                self.deadline = self.loop.time() + self.server.listen.idle_timeout
            return
        self.queue.append((item, close))
        self.deadline = float("inf")  # waiting on us, not on the client
        if self.drainer is None:
            self.drainer = self.loop.create_task(self._drain())
        self._update_reading()

    async def _drain(self) -> None:
        try:
            while self.queue:
                item, close = self.queue[0]
                if isinstance(item, asyncio.Task):
                    try:
                        data = await item
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if self.transport is None or (task is not None and task.cancelling()):
                            raise
                        body, headers = OcspApp.error_answer(ResponseStatus.INTERNAL_ERROR)
                        data = http_response(200, headers, body, close=close)
                    except Exception:  # noqa: BLE001
                        log.exception("unexpected error answering a request")
                        body, headers = OcspApp.error_answer(ResponseStatus.INTERNAL_ERROR)
                        data = http_response(200, headers, body, close=close)
                else:
                    data = item
                if self.queue:
                    self.queue.popleft()
                transport = self.transport
                if transport is None:
                    return
                if data:
                    transport.write(data)
                if close:
                    for rest, _ in self.queue:
                        if isinstance(rest, asyncio.Task):
                            rest.cancel()
                    self.queue.clear()
                    self._linger_close(transport)
                    return
                self._update_reading()
            self.deadline = self.loop.time() + self.server.listen.idle_timeout
        finally:
            self.drainer = None

    def _linger_close(self, transport: asyncio.Transport) -> None:
        """Close after an answer without losing it: closing a socket with unread input makes the
        kernel send a reset, which can destroy the answer in flight (RFC 9112 9.6). So send FIN,
        keep reading (and discarding) until the client closes, and give up after LINGER seconds."""
        self.closing = True
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self.deadline = self.loop.time() + LINGER

    def eof_received(self) -> bool:
        return False  # the client is done: let the transport close

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.closing and not self.queue:
            return  # lingering: keep reading so the close is not a reset
        want_pause = self.write_paused or len(self.queue) >= _MAX_PIPELINE
        if want_pause and not self.paused:
            self.paused = True
            transport.pause_reading()
        elif not want_pause and self.paused:
            self.paused = False
            transport.resume_reading()

    def check_deadline(self, now: float) -> None:
        if self.transport is None or now < self.deadline:
            return
        if self.in_message and not self.queue and not self.closing:
            self._fail(408, "request not received in time\n")
        else:
            self.transport.close()

    def close_if_idle(self) -> bool:
        """For shutdown: close a connection with nothing in progress; True if closed."""
        if self.transport is not None and not self.queue and not self.in_message:
            self.transport.close()
            return True
        return self.transport is None


class FrontendServer:
    """Listening socket, connections, and the deadline sweeper."""

    def __init__(self, app: OcspApp, listen: ListenConfig, readiness: Readiness | None = None) -> None:
        self.app = app
        self.listen = listen
        self.readiness = readiness  # answers /-/ready; None: 404
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpProtocol] = set()
        # A GET target may carry up to max_request_bytes of DER, base64'd and percent-encoded.
        self.max_url = 4 * listen.max_request_bytes + len(listen.path_prefix) + 1024
        # Request line + header block: more raw bytes than this before the end of the head is a 431.
        self.max_head = listen.max_header_bytes + self.max_url
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = (listen.host, listen.port)

    async def start(self, sock: Any = None) -> tuple[str, int]:
        if sock is not None:
            self._server = await self.loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=1024)
        else:
            self._server = await self.loop.create_server(lambda: HttpProtocol(self), self.listen.host,
                                                         self.listen.port, backlog=1024, reuse_address=True)
        name = self._server.sockets[0].getsockname()
        self.address = (name[0], name[1])
        self._sweeper = self.loop.create_task(self._sweep())
        return self.address

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), close the rest."""
        grace = self.listen.shutdown_grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()


def build_issuers(cas: Iterable[tuple[bytes, CaEntry]]) -> IssuerIndex[CaEntry]:
    index: IssuerIndex[CaEntry] = IssuerIndex()
    for der, entry in cas:
        index.add(der, entry)
    return index
