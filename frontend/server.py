"""The OCSP request pipeline, request routing, and the listening server.

Per request:

    key (the DER request: POST body / GET path decoded) -> cache hit? -> answer at once (no ASN.1 parsing)
    miss: decode_request -> issuers known, one CA, hash allowed -> that CA's status snapshot
          -> signer Sign (typed fields) -> cache store (no nonce) -> answer

Any ``OCSPError`` becomes HTTP 200 with the unsigned OCSP error response of its status; anything
else becomes internalError with a logged traceback. The HTTP mechanics of a connection (parsing,
limits, timeouts, pipelining, lingering close) are frontend.http_conn's; ``HttpProtocol`` here only
routes each request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from frontend.cache import Entry, ResponseCache
from frontend.config import ListenConfig
from frontend.http_conn import (
    MAX_REFUSING,
    NO_CACHE,
    ConnectionPool,
    HttpConnection,
    RateLimitedLog,
    etag_matches,
    http_response,
    plain,
    reset,
)
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
FD_RESERVE = 64  # descriptors besides client connections: listener, signer channels, status files, logs
_CT_OCSP = b"Content-Type: application/ocsp-response\r\n"
_NO_CACHE = NO_CACHE
_CC_TAIL = (", " + ohttp.CACHEABLE_DIRECTIVES + "\r\n").encode()


class Signer(Protocol):
    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult: ...


class CaEntry:
    """One configured CA as the server sees it: its name and its status source."""

    __slots__ = ("name", "source")

    def __init__(self, name: str, source: FileStatusSource) -> None:
        self.name = name
        self.source = source


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
        self._ratelog = RateLimitedLog(log)
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



class HttpProtocol(HttpConnection):
    """One client connection: routes each request to the health endpoint or the OCSP pipeline."""

    def __init__(self, server: FrontendServer) -> None:
        super().__init__(server.pool)
        self.server = server
        self.app = server.app

    def failed_answer(self, close: bool) -> bytes:
        body, headers = OcspApp.error_answer(ResponseStatus.INTERNAL_ERROR)
        return http_response(200, headers, body, close=close)

    def _dispatch(self, method: bytes, close: bool) -> None:
        app = self.app
        if method == b"POST":
            if self.content_length is None and not self.chunked:
                self._push(plain(411, "Content-Length required\n", close=True), True)
                self.closing = True
                return
            der = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            head = False
        elif method == b"GET" or method == b"HEAD":
            head = method == b"HEAD"
            target = ohttp.origin_form(self.url)
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
            # The request the path carries, and only that, is the cache key (RFC 6960 A.1): the query
            # and any segments before the base64 are not part of it, and HEAD shares GET's answers.
            try:
                der = ohttp.request_from_path(target, self.listen.path_prefix,
                                              max_bytes=self.listen.max_request_bytes)
            except OCSPError as e:
                self._ocsp_error(e.status, close, head)
                return
        else:
            self._push(plain(405, "only GET, HEAD and POST\n", close=close,
                             extra=b"Allow: GET, HEAD, POST\r\n"), close)
            return

        # The key is the DER request, by POST or GET alike: one entry however a GET is spelt.
        now = app.cache.clock()
        entry = app.cache.get(der, now)
        if entry is not None:
            if self.if_none_match is not None and method != b"POST" and etag_matches(self.if_none_match, entry.der):
                # A cache revalidating what it holds (RFC 9110 13.1.2): headers, no body.
                data = http_response(304, app.hit_headers(entry, now), b"", close=close, head=True, now=now)
            else:
                data = http_response(200, app.hit_headers(entry, now), entry.der, close=close, head=head, now=now)
            self._push(data, close)
            return
        task = self.loop.create_task(self._answer(der, der, close, head))
        self._push(task, close)

    async def _answer(self, der: bytes, key: bytes, close: bool, head: bool) -> bytes:
        async with self.work_slot():
            body, headers = await self.app.answer(der, key)
        return http_response(200, headers, body, close=close, head=head)

    def _ocsp_error(self, status: ResponseStatus, close: bool, head: bool) -> None:
        body, headers = OcspApp.error_answer(status)
        self._push(http_response(200, headers, body, close=close, head=head), close)


class FrontendServer:
    """Listening socket, connections (frontend.http_conn.ConnectionPool), and the once-a-second sweep
    of connection deadlines and expired cache entries."""

    def __init__(self, app: OcspApp, listen: ListenConfig, readiness: Readiness | None = None) -> None:
        self.app = app
        self.listen = listen
        self.readiness = readiness  # answers /-/ready; None: 404
        self.loop = asyncio.get_running_loop()
        self.pool = ConnectionPool(listen, self.loop)
        self.connections = self.pool.open
        self.max_url = self.pool.max_url
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
        check_fd_limit(self.listen.max_connections)
        return self.address

    async def _sweep(self) -> None:
        cache = self.app.cache
        while True:
            await asyncio.sleep(1.0)
            self.pool.sweep(self.loop.time())
            cache.sweep(cache.clock())

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
        for conn in [*self.connections, *self.pool.refusing]:
            if conn.transport is not None:
                reset(conn.transport)
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()


def check_fd_limit(max_connections: int) -> None:
    """Warn when the open-file limit cannot hold listen.max_connections: past the limit accept() fails
    (EMFILE) and new clients get no answer at all instead of a 503."""
    need = max_connections + MAX_REFUSING + FD_RESERVE
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("listen.max_connections = %d needs about %d file descriptors, but the open-file limit "
                    "is %d: raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections",
                    max_connections, need, soft)


def build_issuers(cas: Iterable[tuple[bytes, CaEntry]]) -> IssuerIndex[CaEntry]:
    index: IssuerIndex[CaEntry] = IssuerIndex()
    for der, entry in cas:
        index.add(der, entry)
    return index
