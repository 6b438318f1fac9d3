"""HTTP routing and the listening server.

``HttpProtocol`` routes each request of a connection (the mechanics are frontend.http_conn's): our
own endpoints (/-/health, /-/ready), GET/HEAD/POST -> the DER request -> frontend.app.OcspApp (a
cache hit is answered from ``data_received`` directly, a miss by a task), answers rendered by
frontend.http_answer. ``FrontendServer`` owns the listening sockets (accepted by frontend.acceptor),
the connections and the once-a-second sweep.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from frontend.acceptor import Acceptor, failure_log, listening_sockets
from frontend.access_log import AccessLog
from frontend.app import Answer, OcspApp
from frontend.cache import Entry, cert_label
from frontend.config import ListenConfig
from frontend.http_answer import HitAnswers, ocsp_error_http, ocsp_http
from frontend.http_conn import MAX_REFUSING, ConnectionPool, HttpConnection, etag_matches, plain, reset
from frontend.readiness import READY_PATH, Readiness
from shared.metrics import Buckets
from shared.ocsp import http as ohttp
from shared.ocsp.errors import OCSPError
from shared.ocsp.types import ResponseStatus
from shared.tasks import cancel_and_wait

log = logging.getLogger("frontend.server")

HEALTH_PATH = b"/-/health"
SUCCESSFUL = ResponseStatus.SUCCESSFUL
# The metrics' names of the answers that are not successful (RFC 6960's spelling).
ANSWER_LABELS = {ResponseStatus.MALFORMED_REQUEST: "malformedRequest", ResponseStatus.INTERNAL_ERROR: "internalError",
                 ResponseStatus.TRY_LATER: "tryLater", ResponseStatus.SIG_REQUIRED: "sigRequired",
                 ResponseStatus.UNAUTHORIZED: "unauthorized"}
FD_RESERVE = 64  # descriptors besides client connections: listener, signer channels, status files, logs
_METHODS = {b"GET": "GET", b"HEAD": "HEAD", b"POST": "POST"}


class HttpProtocol(HttpConnection):
    """One client connection: routes each request to the health endpoint or the OCSP pipeline."""

    def __init__(self, server: FrontendServer) -> None:
        super().__init__(server.pool)
        self.server = server
        self.app = server.app
        self.prefix = server.prefix
        self.path_keys = server.path_keys.get
        self.hits = server.hits
        self.access = server.access
        self.client_text: str | None = None  # the client's address as the access log shows it
        self.requests = server.requests  # method -> outcome (HttpProtocol._served) -> count
        self.latency = server.latency

    def _served(self, method: bytes, outcome: str, started: float | None) -> None:
        """One OCSP request answered: the one place each is counted (frontend.metrics reads the counts).
        ``outcome``: the cert status of a successful answer (good, revoked, unknown, mixed), else the
        answer's ``ANSWER_LABELS`` name; ``started``: when it was read, None for a cache hit (answered
        within its read callback: not timed, which would cost the hit a third of its bookkeeping). No
        prometheus-client call here: two dict lookups with cached string hashes."""
        counts = self.requests[method]
        counts[outcome] = counts.get(outcome, 0) + 1
        if started is not None:
            self.latency.observe(perf_counter() - started)

    def failed_answer(self, close: bool) -> bytes:
        return ocsp_error_http(ResponseStatus.INTERNAL_ERROR, close=close)

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
            url = self.url
            der = self.path_keys(url)  # a target seen before: its request, routed and decoded then
            if der is None:
                der = self._get_request(url, close, head, method)
                if der is None:
                    return
        else:
            self._push(plain(405, "only GET, HEAD and POST\n", close=close,
                             extra=b"Allow: GET, HEAD, POST\r\n"), close)
            return

        # The key is the DER request, by POST or GET alike: one entry however a GET is spelt.
        now = app.cache.clock()
        entry = app.cached(der, now)
        if entry is not None:
            if close or head or (self.if_none_match is not None and method != b"POST"):
                self._push(self._hit_http(entry, now, method, close, head), close)
            else:  # the common hit: kept-alive, with its body, no validator to compare
                self._push(self.hits.answer(der, entry, now), False)
            self._served(method, entry.cert_label, None)
            if self.access is not None:
                self._answered(method, entry, self.started, now)
            return
        task = self.loop.create_task(self._answer(der, der, close, head, method, self.started))
        self._push(task, close)

    def _answered(self, method: bytes, what: Entry | Answer | ResponseStatus, started: float,
                  now: float = 0.0) -> None:
        """The one per-request hook: each OCSP request answered (a cache hit's ``Entry``, the pipeline's
        ``Answer``, the status of a GET path refused before it) passes here once, ``started`` being
        when its message began (perf_counter). Writes its access log line."""
        access = self.access
        if access is None:
            return
        us = int((perf_counter() - started) * 1e6)
        client = self.client_text
        if client is None:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            client = self.client_text = access.client(peer)
        name = _METHODS.get(method, "-")
        if isinstance(what, Entry):
            access.hit(client, name, what, now, us)
        elif isinstance(what, Answer):
            access.answer(client, name, what, us)
        else:
            access.refused(client, name, what, us)

    def _get_request(self, url: bytes, close: bool, head: bool, method: bytes) -> bytes | None:
        """Route a GET or HEAD target not seen before: our own endpoints and errors are answered here
        (None), an OCSP request's DER is returned (and remembered for the same target)."""
        target = ohttp.origin_form(url)
        if target.startswith(b"/-/"):  # our own endpoints; '-' never starts a base64 DER request
            path = target.split(b"?", 1)[0]
            if path == HEALTH_PATH:
                self._push(plain(200, "ok\n", close=close, head=head), close)
            elif path == READY_PATH and self.server.readiness is not None:
                status, text = self.server.readiness.answer()  # a kept verdict (frontend.readiness)
                self._push(plain(status, text, close=close, head=head), close)
            else:
                self._push(plain(404, "not found\n", close=close, head=head), close)
            return None
        if not target.startswith(self.prefix):
            path = target.split(b"?", 1)[0]
            if path + b"/" == self.prefix:
                self._ocsp_error(ResponseStatus.MALFORMED_REQUEST, close, head, method)
            else:
                self._push(plain(404, "not found\n", close=close, head=head), close)
            return None
        # The request the path carries, and only that, is the cache key (RFC 6960 A.1): the query
        # and any segments before the base64 are not part of it, and HEAD shares GET's answers.
        try:
            der = ohttp.request_from_path(target, self.listen.path_prefix,
                                          max_bytes=self.listen.max_request_bytes)
        except OCSPError as e:
            self._ocsp_error(e.status, close, head, method)
            return None
        self.server.path_keys.put(url, der)
        return der

    def _hit_http(self, entry: Entry, now: float, method: bytes, close: bool, head: bool) -> bytes:
        """A cache hit's answer that closes, has no body (HEAD) or answers an If-None-Match."""
        # If-None-Match: a cache revalidating what it holds (RFC 9110 13.1.2): headers, no body.
        not_modified = (self.if_none_match is not None and method != b"POST"
                        and etag_matches(self.if_none_match, entry.der))
        return ocsp_http(entry.der, entry.headers, entry.next_update, self.app.max_age_cap, now, close, head,
                         not_modified, now)

    async def _answer(self, der: bytes, key: bytes, close: bool, head: bool, method: bytes,
                      started: float) -> bytes:
        async with self.work_slot():
            answer = await self.app.answer(der, key)
        self._served(method, cert_label(answer.cert_status) if answer.status is SUCCESSFUL
                     else ANSWER_LABELS[answer.status],
                     started)
        self._answered(method, answer, started)
        app = self.app
        return ocsp_http(answer.der, answer.headers, answer.next_update, app.max_age_cap, app.cache.clock(),
                         close, head)

    def _ocsp_error(self, status: ResponseStatus, close: bool, head: bool, method: bytes) -> None:
        self._push(ocsp_error_http(status, close=close, head=head), close)
        self._served(method, ANSWER_LABELS[status], self.started)
        self._answered(method, status, self.started)


class FrontendServer:
    """Listening socket, connections (frontend.http_conn.ConnectionPool), and the once-a-second sweep
    of connection deadlines and expired cache entries."""

    def __init__(self, app: OcspApp, listen: ListenConfig, readiness: Readiness | None = None,
                 access: AccessLog | None = None) -> None:
        self.app = app
        self.access = access  # the access log; None: off
        self.listen = listen
        self.prefix = listen.path_prefix.encode()
        self.readiness = readiness  # answers /-/ready; None: 404
        self.loop = asyncio.get_running_loop()
        self.pool = ConnectionPool(listen, self.loop)
        self.connections = self.pool.open
        self.max_url = self.pool.max_url
        self.path_keys = ohttp.PathKeys()  # GET targets seen -> their DER requests
        self.hits = HitAnswers(app.max_age_cap)  # the answers of this second's cache hits
        self._acceptors: list[Acceptor] = []  # one per listening socket (frontend.acceptor)
        self._accept_failures = failure_log(self.loop)
        # Per-request metrics, plain values (HttpProtocol._served; frontend.metrics reads them).
        self.requests: dict[bytes, dict[str, int]] = {b"GET": {}, b"HEAD": {}, b"POST": {}}
        self.latency = Buckets()
        self._sweeper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = (listen.host, listen.port)

    async def start(self, sock: Any = None, *, socks: Sequence[Any] = ()) -> tuple[str, int]:
        """Listen on ``listen.host``/``port``, or serve the bound sockets given (``sock``, or ``socks``: a
        worker's share of the supervisor's sockets, frontend.workers); returns the first address."""
        def protocol() -> HttpProtocol:
            return HttpProtocol(self)

        given = [sock] if sock is not None else list(socks)
        if not given:
            given = listening_sockets(self.listen.host, self.listen.port, backlog=1024)
        self._acceptors = [Acceptor(self.loop, s, protocol, self._accept_failures) for s in given]
        for a in self._acceptors:
            a.start()
        name = given[0].getsockname()
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
        for acceptor in self._acceptors:
            acceptor.close()
        self._accept_failures.close()  # the counts still held
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
        await cancel_and_wait(self._sweeper)

    @property
    def accept_failures(self) -> int:
        """accept(2) calls that failed on this process's listeners (EMFILE, ENFILE, ...), for a metric."""
        return sum(a.failures for a in self._acceptors)

    @property
    def accept_shed(self) -> int:
        """Connections answered 503 and closed because the process was out of descriptors."""
        return sum(a.shed for a in self._acceptors)


def check_fd_limit(max_connections: int) -> None:
    """Warn when the open-file limit cannot hold listen.max_connections: past the limit accept() fails
    (EMFILE) and new clients get no answer at all instead of a 503. With listen.workers > 1 each worker
    checks for itself: the limit is per process, and so is max_connections."""
    need = max_connections + MAX_REFUSING + FD_RESERVE
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("listen.max_connections = %d needs about %d file descriptors, but the open-file limit "
                    "is %d: raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections",
                    max_connections, need, soft)


