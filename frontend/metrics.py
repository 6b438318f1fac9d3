"""The frontend's Prometheus metrics (``[metrics] address``): GET /metrics on a listener of its own,
never on the OCSP port.

Nothing here runs per request. The request path keeps plain values (``HttpProtocol._served`` counts
each OCSP answer into ``FrontendServer.requests`` / ``latency``; the cache, the signer client, the
in-flight bound, the store and the status sources keep ints) and ``FrontendMetrics.families`` turns
them into metric families when the endpoint is scraped.

With ``[listen] workers`` > 1 the supervisor (which runs no event loop: frontend.workers) binds the
metrics listener once and every worker accepts on it; each worker writes its families to a snapshot
file in a private directory every second (shared.metrics_http), and the worker that takes a scrape
writes its own afresh, then merges every worker's file: one endpoint, the sums over the workers.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from frontend.http_app import ANSWER_LABELS, FrontendServer
from shared.metrics import counter, gauge, histogram, registry_of, render, render_merged
from shared.metrics_http import read_snapshots, split_address, write_snapshot
from shared.ocsp.errors import TryLater
from shared.status.base import FileStatusSource
from shared.status.url_source import UrlCrlSource

if TYPE_CHECKING:
    from frontend.sign_limit import BoundedSigner
    from frontend.signer_client import SignerClient

log = logging.getLogger("frontend")

# Gauges every worker reports for the same thing (the same status files): the maximum, not the sum.
SAME_EVERYWHERE = frozenset({
    "ocsp_frontend_status_age_seconds", "ocsp_frontend_status_entries", "ocsp_frontend_status_generation",
    "ocsp_frontend_crl_last_fetch_ok_seconds",
})
_ERRORS = frozenset(ANSWER_LABELS.values())

# More families, added by other parts of the frontend (each returns metric families at scrape time).
Extra = Callable[[], Iterable[Metric]]


class FrontendMetrics:
    """The families of one frontend process (a worker, or the single process)."""

    def __init__(self, server: FrontendServer, signer: SignerClient, bounded: BoundedSigner,
                 sources: Sequence[FileStatusSource], clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.signer = signer
        self.bounded = bounded
        self.sources = sources
        self.clock = clock
        self.extra: list[Extra] = []  # e.g. accept failures of the HTTP server, CRL fetch failures

    def families(self) -> Iterator[Metric]:
        server = self.server
        app = server.app
        requests: dict[tuple[str, str, str], int] = {}
        for method, outcomes in server.requests.items():
            for outcome, n in list(outcomes.items()):
                key = (method.decode(), outcome, "") if outcome in _ERRORS else (method.decode(), "successful", outcome)
                requests[key] = n
        yield counter("ocsp_frontend_requests", "OCSP requests answered, by HTTP method, OCSP response status and, "
                      "for successful answers, cert status (good, revoked, unknown; mixed: several CertIDs that "
                      "differ).", ("method", "answer", "cert_status"), requests)
        yield histogram("ocsp_frontend_request_duration_seconds", "Requests not answered from the cache: from "
                        "the request read to its answer made (the signer's time included).", (), server.latency)
        cache = app.cache
        yield counter("ocsp_frontend_cache_lookups", "Cache lookups by result (a request not seen before is "
                      "looked up by its bytes, then by its CertIDs: a miss, then a hit or a miss).", ("result",),
                      {("hit",): cache.hits, ("miss",): cache.misses})
        yield counter("ocsp_frontend_cache_evictions", "Cache entries dropped for room (cache.max_entries, "
                      "cache.max_bytes).", (), cache.evictions)
        yield gauge("ocsp_frontend_cache_entries", "Entries in the response cache.", (), len(cache))
        yield gauge("ocsp_frontend_cache_bytes", "Bytes the cache entries are counted for (cache.max_bytes).", (),
                    cache.bytes)
        if app.store is not None:
            yield counter("ocsp_frontend_store_answers", "Answers found in the shared Redis store: served, or "
                          "refused (expired, another status, a replaced responder) and signed anew.", ("result",),
                          {("served",): app.store_hits, ("refused",): app.store_refused})
            yield counter("ocsp_frontend_store_errors", "Redis calls that failed (refused, timed out, "
                          "unreachable): a miss each.", (), app.store.errors)
        yield counter("ocsp_frontend_signatures", "Answers signed for this frontend by the signer.", (), app.signed)
        yield histogram("ocsp_frontend_signer_call_seconds", "One Sign or SignBatch call to the signer.", (),
                        self.signer.call_seconds)
        yield counter("ocsp_frontend_signer_errors", "Requests the signer call failed, by gRPC status code.",
                      ("code",), {(code,): n for code, n in self.signer.errors.items()})
        yield gauge("ocsp_frontend_signatures_in_flight", "Signatures asked of the signer and not yet answered "
                    "(signer.max_in_flight bounds them).", (), self.bounded.in_flight)
        yield counter("ocsp_frontend_signatures_refused", "Requests answered tryLater at once: "
                      "signer.max_in_flight signatures were in flight.", (), self.bounded.refused)
        now = self.clock()
        age, entries, generation, failures = {}, {}, {}, {}
        for source in self.sources:
            key = (source.name,)
            generation[key] = source.generation
            failures[key] = source.reload_failures
            try:
                snap = source.current()
            except TryLater:  # no data loaded yet: only the counts
                continue
            issued = snap.issued_at()
            since = issued.timestamp() if issued is not None else source.loaded_at
            if since is not None:
                age[key] = now - since
            count = snap.count()
            if count is not None:
                entries[key] = count
        ca = ("ca",)
        yield gauge("ocsp_frontend_status_age_seconds", "Age of the CA's status data: now - its thisUpdate (a "
                    "CRL), or now - when it was loaded (index.txt).", ca, age)
        yield gauge("ocsp_frontend_status_entries", "Serials the CA's status data names (absent: not counted).",
                    ca, entries)
        yield gauge("ocsp_frontend_status_generation", "Loads of the CA's status data (bumps on each reload).",
                    ca, generation)
        yield counter("ocsp_frontend_status_reload_failures", "Reloads of the CA's status data that failed (the "
                      "last good data kept).", ca, failures)
        yield counter("ocsp_frontend_accept_failures", "accept(2) calls on the OCSP listeners that failed "
                      "(EMFILE, ENFILE, ...; logged once per cause and 5 s).", (), server.accept_failures)
        yield counter("ocsp_frontend_accept_shed", "Connections answered 503 and closed at once because the "
                      "process was out of file descriptors.", (), server.accept_shed)
        fetches: dict[tuple[str, str], int] = {}
        fetched_ok: dict[tuple[str], float] = {}
        for source in self.sources:
            if isinstance(source, UrlCrlSource):
                fetches[(source.name, "ok")] = source.fetch_successes
                fetches[(source.name, "failed")] = source.fetch_failures
                if source.last_fetch_ok is not None:
                    fetched_ok[(source.name,)] = source.last_fetch_ok
        if fetches:
            yield counter("ocsp_frontend_crl_fetches", "Fetches of a CA's CRL from its URL (status.url), by "
                          "result: ok (a new CRL installed, or unchanged) or failed (kept the last good).",
                          ("ca", "result"), fetches)
            yield gauge("ocsp_frontend_crl_last_fetch_ok_seconds", "When the CA's CRL was last fetched "
                        "successfully (Unix time).", ca, fetched_ok)
        for extra in self.extra:
            yield from extra()

    def render(self) -> bytes:
        return render(registry_of(self.families))


class Snapshots:
    """The frontend workers' shared view: a private directory of snapshot files (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls) -> Snapshots:
        """A new private directory (mode 0700) for one run of the supervisor."""
        return cls(Path(tempfile.mkdtemp(prefix="ocsp-frontend-metrics-")))

    def scrape(self, number: int, own: Callable[[], bytes]) -> bytes:
        write_snapshot(self.directory, number, own())
        texts = read_snapshots(self.directory)
        return render_merged(texts, SAME_EVERYWHERE, [
            gauge("ocsp_frontend_metrics_workers", "Frontend workers whose metrics this scrape merged.", (),
                  len(texts))])

    def remove(self) -> None:
        for path in self.directory.glob("*"):
            path.unlink(missing_ok=True)
        self.directory.rmdir()


def bind_metrics(address: str) -> socket.socket:
    """The metrics listener the workers' supervisor holds (every worker accepts on it)."""
    host, port = split_address(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
