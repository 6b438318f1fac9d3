"""HTTP/1.1 connections: an asyncio.Protocol driving httptools.

``HttpConnection`` owns everything about one connection except what a request means: parsing,
the limits on request line, headers and body, the request and idle deadlines, ordered answers
for pipelined requests (a cache hit with nothing queued before it is written from
``data_received`` directly; everything else goes through a per-connection queue drained by one
task), back-pressure (input is parsed no faster than answers leave), and the lingering close. A
subclass routes each complete message (``_dispatch``) and says what a failed answer looks like
(``failed_answer``). ``ConnectionPool`` admits connections against listen.max_connections and
listen.max_connections_per_client (503 past either), holds the per-client in-flight slots, and
sweeps deadlines: one that passes with answers unsent, or while lingering, aborts the connection.

HTTP faults (unparseable request, oversized body or headers, wrong framing) get a plain HTTP error
and, where the stream can no longer be trusted, the connection is closed. HTTP/1.0 requests are
answered and the connection closed.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import socket
import struct
import sys
import termios
import time
from collections import deque
from time import perf_counter
from typing import Any

import httptools

from frontend.config import ListenConfig
from shared.ocsp import http as ohttp
from shared.ratelog import RateLimitedLog

log = logging.getLogger("frontend.http")

CRLF = b"\r\n"
NO_CACHE = ("Cache-Control: " + ohttp.NOT_CACHEABLE + "\r\n").encode()
_REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 411: b"Length Required",
            413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, text) for code, text in _REASONS.items()}

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


# -- answers ---------------------------------------------------------------------------------------------


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
               + NO_CACHE + extra)
    return http_response(status, headers, body, close=close, head=head)


class _Reject(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# The lengths of the header names on_header looks at: Host, Expect, Connection, If-None-Match,
# Content-Length, Proxy-Connection, Transfer-Encoding.
_HEADER_LENGTHS = frozenset((4, 6, 10, 13, 14, 16, 17))
_MAX_PIPELINE = 32
MAX_RUNNING = 8  # answers of one connection being worked on (signed) at the same time
_FEED_SLICE = 16384  # bytes handed to the parser at once (see data_received)
LINGER = 2.0  # seconds a closing connection keeps draining the client's input
# Connections past a cap that are still being told so (503, then a lingering close). Beyond this
# many at once, further ones are reset without an answer: refusing must stay cheaper than serving.
MAX_REFUSING = 128
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections
RETRY_AFTER = 1  # seconds, in the 503 past a connection cap
_LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to ``transport`` that the client has not acknowledged: the transport's buffer
    plus the kernel's send queue (SIOCOUTQ, Linux; 0 where it cannot be asked)."""
    n = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            n += int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)
        except (OSError, ValueError, AttributeError):
            pass
    return n


def reset(transport: asyncio.Transport) -> None:
    """Abort with a TCP reset. abort() alone only closes the socket, which sends a FIN unless input is
    still unread; a FIN queues behind answers the client is not reading (it never arrives) and leaves
    the kernel an orphaned socket holding them. A zero linger time makes the close a reset that
    drops them."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except (OSError, AttributeError):
            pass
    transport.abort()


def client_key(peer: Any) -> str:
    """Who a connection counts against for the per-client bounds: its IPv4 address, or the /64 of
    its IPv6 address (one host or site usually holds a whole /64). IPv4-mapped IPv6 is IPv4."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        host = peer[0]
        try:
            addr = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return host
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        return str(addr)
    return ""  # a unix socket, or a peer already gone


class _Client:
    """The connections and in-flight answers of one client address."""

    __slots__ = ("connections", "key", "slots")

    def __init__(self, key: str, inflight: int) -> None:
        self.key = key
        self.connections = 0
        self.slots = asyncio.Semaphore(inflight) if inflight > 0 else None


class ConnectionPool:
    """Every open connection, admission against listen.max_connections and
    listen.max_connections_per_client, per-client in-flight slots, and the deadline sweep."""

    def __init__(self, listen: ListenConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.listen = listen
        self.loop = loop
        self.open: set[HttpConnection] = set()
        self.refusing: set[HttpConnection] = set()
        self.clients: dict[str, _Client] = {}
        self.refused = 0  # connections refused since start (for logs and tests)
        # A GET target may carry up to max_request_bytes of DER, base64'd and percent-encoded.
        self.max_url = 4 * listen.max_request_bytes + len(listen.path_prefix) + 1024
        # Request line + header block: more raw bytes than this before the end of the head is a 431.
        self.max_head = listen.max_header_bytes + self.max_url
        self._ratelog = RateLimitedLog(log, REFUSAL_LOG_INTERVAL, time.monotonic)

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, conn: HttpConnection, peer: Any) -> _Client | None:
        """Count ``conn`` in, or None when a cap is reached (the caller refuses it)."""
        listen = self.listen
        key = client_key(peer)
        client = self.clients.get(key)
        if len(self.open) >= listen.max_connections:
            what = f"listen.max_connections ({listen.max_connections})"
        elif (client is not None and listen.max_connections_per_client
              and client.connections >= listen.max_connections_per_client):
            what = f"listen.max_connections_per_client ({listen.max_connections_per_client}) for {key}"
        else:
            if client is None:
                client = self.clients[key] = _Client(key, listen.max_inflight_per_client)
            client.connections += 1
            self.open.add(conn)
            return client
        self.refused += 1
        self._ratelog.log(logging.WARNING, "refused", "refusing connections: %s reached (%d refused so far)",
                      what, self.refused)
        return None

    def release(self, conn: HttpConnection, client: _Client | None) -> None:
        self.open.discard(conn)
        self.refusing.discard(conn)
        if client is not None:
            client.connections -= 1
            if client.connections <= 0 and self.clients.get(client.key) is client:
                del self.clients[client.key]

    def sweep(self, now: float) -> None:
        for conn in [*self.open, *self.refusing]:
            conn.check_deadline(now)


class _WorkSlot:
    """``async with``: one of the connection's MAX_RUNNING slots, then one of its client's."""

    __slots__ = ("client", "conn")

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.client: asyncio.Semaphore | None = None

    async def __aenter__(self) -> None:
        conn = self.conn
        running = conn.running
        if running is None:
            running = conn.running = asyncio.Semaphore(MAX_RUNNING)
        await running.acquire()
        client = conn.client.slots if conn.client is not None else None
        if client is not None:
            try:
                await client.acquire()
            except BaseException:
                running.release()
                raise
            self.client = client

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.release()
        assert self.conn.running is not None
        self.conn.running.release()


class HttpConnection(asyncio.Protocol):
    """One client connection; a subclass implements ``_dispatch`` and ``failed_answer``."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.listen = listen = pool.listen
        self.loop = pool.loop
        # Settings read for every request, as attributes of their own.
        self.max_header_bytes = listen.max_header_bytes
        self.max_request_bytes = listen.max_request_bytes
        self.request_timeout = listen.request_timeout
        self.idle_timeout = listen.idle_timeout
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None  # None until admitted (and for a refused connection)
        self.queue: deque[tuple[bytes | asyncio.Task[bytes], bool]] = deque()
        self.drainer: asyncio.Task[None] | None = None
        # Each pipelined miss gets its task (answers stay in order; at most _MAX_PIPELINE wait before
        # parsing stops), but at most MAX_RUNNING of them run (and call the signer) at once, and at
        # most listen.max_inflight_per_client of all its client's connections together.
        self.running: asyncio.Semaphore | None = None
        self.closing = False
        self.peer_eof = False  # the client has half-closed (eof_received)
        self.paused = False
        self.write_paused = False
        self.deadline = 0.0
        self.pending = b""  # input read but not parsed yet, while the connection is backlogged
        self._feed_soon = False  # _feed_pending is scheduled
        self.headers_done = False  # the current message's head has been parsed
        self.head_raw = 0  # raw bytes fed since the last message ended, while its head was incomplete
        self._reset()

    def _reset(self) -> None:
        # (on_message_begin sets the same, written out)
        self.url = b""
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect_continue = False
        self.hosts = 0
        self.connection_header = False
        self.if_none_match: bytes | None = None
        self.in_message = False
        self.started = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = self.pool.admit(self, transport.get_extra_info("peername"))
        if self.client is None:
            self._refuse(self.transport)
            return
        self.deadline = self.loop.time() + self.idle_timeout

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Past a connection cap: a short 503 and a lingering close, or at once a reset when too many
        refused connections are still lingering."""
        self.closing = True
        if len(self.pool.refusing) >= MAX_REFUSING:
            reset(transport)
            return
        self.pool.refusing.add(self)
        transport.write(plain(503, "too many connections, retry later\n", close=True,
                              extra=b"Retry-After: %d\r\n" % RETRY_AFTER))
        self._linger_close(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.release(self, self.client)
        self.client = None
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
            return  # lingering (or refused): the input is read and dropped
        if self.pending:  # reading is paused; a transport should not deliver more, but keep order
            self.pending += data
            return
        # The deadline moves only when a message begins or is answered, never for bytes as such:
        # empty lines between messages (which llhttp skips) must not keep a connection open.
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            # httptools collects a header name or value itself and calls on_header only once it is
            # complete, so on_header's count alone would let one endless header value through (and
            # copy it quadratically). So the raw bytes fed while a message's head is incomplete are
            # counted here, before the parser sees them, and fed in slices: past max_head -> 431.
            # (Bytes of a pipelined message's head in the slice where the previous message ends
            # are not counted, so a head may exceed max_head by at most one slice.)
            n = len(data)
            if n <= _FEED_SLICE and (self.headers_done or self.head_raw + n <= self.pool.max_head):
                # The common read (one or a few whole requests): one slice, as the loop would feed it.
                if not self.headers_done:
                    self.head_raw += n
                self.parser.feed_data(data)
                return
            pos = 0
            while pos < n:
                if self.headers_done:
                    take = _FEED_SLICE
                else:
                    room = self.pool.max_head - self.head_raw
                    if room <= 0:
                        self._fail(431, "request headers too large\n")
                        return
                    take = min(room, _FEED_SLICE)
                    self.head_raw += min(take, n - pos)
                chunk = data if pos == 0 and take >= n else data[pos:pos + take]
                pos += len(chunk)
                self.parser.feed_data(chunk)
                if self.closing:
                    return
                if pos < n and self._backlogged():
                    # One read can hold thousands of pipelined requests: parse no further than the
                    # answers can leave, keep the rest (reading stays paused until it is parsed).
                    self.pending = data[pos:]
                    self._update_reading()
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
        except Exception:  # a bug here must cost this connection, not the server
            log.exception("unexpected error reading a request")
            if self.transport is not None:
                self.transport.close()

    # -- httptools callbacks ---------------------------------------------------------------------------
    # Once a message decided to close the connection, llhttp still parses whatever followed it in
    # the same read: every callback ignores that (no answer, no task, no write after write_eof).
    def on_message_begin(self) -> None:
        if self.closing:
            return
        # _reset(), written out (this runs for every request)
        self.url = b""
        self.head_bytes = 0
        self.body = []
        self.body_len = 0
        self.content_length = None
        self.chunked = False
        self.expect_continue = False
        self.hosts = 0
        self.connection_header = False
        self.if_none_match = None
        self.in_message = True
        self.deadline = self.loop.time() + self.request_timeout
        self.started = perf_counter()  # for the request's latency (the access log)

    def on_url(self, url: bytes) -> None:
        if self.closing:
            return
        self.url += url
        if len(self.url) > self.pool.max_url:
            raise _Reject(414, "request target too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.closing:
            return
        n = len(name)
        size = self.head_bytes + n + len(value) + 4
        self.head_bytes = size
        if size > self.max_header_bytes:
            raise _Reject(431, "request headers too large\n")
        if n not in _HEADER_LENGTHS:  # none of the names below (Content-Type, User-Agent, Accept, ...)
            return
        name = name.lower()
        if name == b"host":
            self.hosts += 1
        elif name == b"content-length":
            self.content_length = value
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":  # RFC 9112 6.1: a coding we do not implement
                raise _Reject(501, "only the chunked transfer coding is supported\n")
            self.chunked = True
        elif name == b"if-none-match":
            self.if_none_match = value
        elif name == b"connection" or name == b"proxy-connection":  # llhttp reads both alike
            self.connection_header = True
        elif name == b"expect" and value.lower() == b"100-continue":
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
            if length > self.max_request_bytes:
                raise _Reject(413, f"request body larger than {self.max_request_bytes} bytes\n")
        if self.expect_continue and not self.queue and self.transport is not None:
            # curl and others wait for this before sending a body over 1 KB. (With answers still
            # queued it cannot go out in order; such a client sends the body after its own timeout.)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        size = self.body_len + len(body)
        self.body_len = size
        if size > self.max_request_bytes:
            raise _Reject(413, f"request body larger than {self.max_request_bytes} bytes\n")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.in_message = False
        self.headers_done = False
        self.head_raw = 0
        parser = self.parser
        method = parser.get_method()
        # Anything but HTTP/1.1 is closed. llhttp keeps HTTP/1.0, 0.9 and 2.0 alive only with a
        # Connection (or Proxy-Connection) keep-alive, and without one only HTTP/1.1, the one version
        # it accepts with both numbers above 0 (tests/unit/frontend/test_http_framing.py), so the
        # version string, costly to make, is asked for only when there was such a header.
        close = not parser.should_keep_alive() or (self.connection_header and parser.get_http_version() != "1.1")
        try:
            self._dispatch(method, close)
        except Exception:  # never drop a connection over a bug
            log.exception("unexpected error dispatching a request")
            self._push(self.failed_answer(close), close)
        if close:
            self.closing = True

    # -- what the subclass decides -----------------------------------------------------------------------
    def _dispatch(self, method: bytes, close: bool) -> None:
        """Answer the message just completed (its url, headers and body are on self): ``_push`` bytes
        or a task that makes them."""
        raise NotImplementedError

    def failed_answer(self, close: bool) -> bytes:
        """The whole HTTP answer to a request whose handling failed unexpectedly."""
        raise NotImplementedError

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
                self.deadline = self.loop.time() + self.idle_timeout
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
                        data = self.failed_answer(close)
                    except Exception:  # a bug: one internalError answer
                        log.exception("unexpected error answering a request")
                        data = self.failed_answer(close)
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
            if not self.in_message:  # else the message's own request deadline runs
                self.deadline = self.loop.time() + self.idle_timeout
        finally:
            self.drainer = None

    def _linger_close(self, transport: asyncio.Transport) -> None:
        """Close after an answer without losing it: closing a socket with unread input makes the
        kernel send a reset, which can destroy the answer in flight (RFC 9112 9.6). So send FIN,
        keep reading (and discarding) until the client closes, and give up after LINGER seconds."""
        self.closing = True
        self.pending = b""
        if self.peer_eof or not transport.can_write_eof():  # (no input left to drain after a client's EOF)
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
        """The client has sent all it will: perhaps a half-close after its requests (``shutdown(SHUT_WR)``,
        ``nc -N``, a script's ``printf ... | nc``), which HTTP/1.1 allows. Answers still being made are
        sent, then the connection is closed; with none in the making the transport closes now (it
        sends what is already written first)."""
        self.peer_eof = True
        if self.queue and self.transport is not None:
            if not self.closing:  # close once the answers asked for are out
                self._push(b"", True)
                self.closing = True
            return True  # keep the transport open for those answers
        return False

    def _backlogged(self) -> bool:
        """Answers are not leaving fast enough to take more requests: the client does not read them
        (writing paused) or _MAX_PIPELINE of them are waiting in order."""
        return self.write_paused or len(self.queue) >= _MAX_PIPELINE

    def _feed_pending(self) -> None:
        self._feed_soon = False
        data, self.pending = self.pending, b""
        if data and not self.closing and self.transport is not None:
            self._feed(data)
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.closing and not self.queue:
            return  # lingering: keep reading so the close is not a reset
        backlogged = self._backlogged()
        if self.pending and not backlogged and not self._feed_soon:
            self._feed_soon = True  # not from here: this may run inside a write or a parser callback
            self.loop.call_soon(self._feed_pending)
        want_pause = backlogged or bool(self.pending)
        if want_pause and not self.paused:
            self.paused = True
            transport.pause_reading()
        elif not want_pause and self.paused:
            self.paused = False
            transport.resume_reading()

    def work_slot(self) -> _WorkSlot:
        """``async with conn.work_slot():`` around the work of one answer (see ``running``)."""
        return _WorkSlot(self)

    def check_deadline(self, now: float) -> None:
        transport = self.transport
        if transport is None or now < self.deadline:
            return
        if self.closing or transport.is_closing() or unsent(transport):
            # Lingering past LINGER, a close that has not completed, or answers the client is not
            # reading: close() would wait for the client to take them, for ever (or, once they are
            # all in the kernel, leave an orphaned socket whose FIN waits behind them). Reset instead.
            reset(transport)
        elif self.in_message and not self.queue:
            self._fail(408, "request not received in time\n")
        else:
            transport.close()

    def close_if_idle(self) -> bool:
        """For shutdown: close a connection with nothing in progress; True if closed."""
        if self.transport is not None and not self.queue and not self.in_message and not self.pending:
            self.transport.close()
            return True
        return self.transport is None

