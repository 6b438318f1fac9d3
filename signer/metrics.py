"""The signer's Prometheus metrics (``[metrics] address``): GET /metrics.

Everything is read at scrape time (shared.metrics): the gauges from the current responder set, the
clock and the audit space check; the counters and histograms from plain values the signing path
keeps (``SignerService.signatures``, ``sign_seconds``, ``batch_sizes``; ``AuditLog.write_seconds``,
``write_failures``), so nothing on the signing path takes a lock for the metrics.

    ocsp_signer_signatures_total{ca,result}       requests to sign, by CA and result: ok, refused, error
    ocsp_signer_sign_seconds                      histogram: one signature in the token
    ocsp_signer_batch_size                        histogram: requests per Sign / SignBatch call
    ocsp_signer_signatures_in_flight              signatures accepted and not yet answered
    ocsp_signer_audit_write_seconds               histogram: one audit group write + fsync
    ocsp_signer_audit_write_failures_total        audit group writes that failed (their signatures refused)
    ocsp_signer_responder_generation{ca}          generation of the CA's current responder
    ocsp_signer_responder_not_after_seconds{ca}   notAfter of its certificate (Unix time)
    ocsp_signer_responder_expiry_seconds{ca}      seconds until notAfter (negative once expired)
    ocsp_signer_responder_expiring{ca}            1 within [policy] expiry_warning of notAfter (or past it)
    ocsp_signer_rotations_total{kind,result}      rotate (Admin RPC) / reload (SIGHUP): ok, refused, unchanged
    ocsp_signer_watch_streams                     Watch streams open now ([listen] max_watchers)
    ocsp_signer_watch_refused_total               Watch calls refused at max_watchers
    ocsp_signer_audit_free_bytes                  free bytes in [audit] dir at the last check (absent if unreadable)
    ocsp_signer_audit_min_free_bytes              [audit] min_free
    ocsp_signer_audit_space_low                   1 while free space is below min_free (or cannot be read)
    ocsp_signer_status_refusals_total{ca}         Sign requests refused: the signer's own status data disagreed
    ocsp_signer_status_checked{ca}                1 for each CA whose statuses are checked ([policy] verify_status)

With ``[signer] workers`` > 1 the supervisor serves the endpoint and asks every worker for its
families over the control channel at each scrape (signer.workers): counters and histograms are the
sums over the workers, ``SAME_EVERYWHERE`` gauges the maximum.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.metrics_core import Metric

from shared.metrics import Buckets, counter, gauge, histogram, registry_of, render_merged
from shared.metrics import render as render_registry
from shared.metrics_http import start_endpoint

if TYPE_CHECKING:  # annotations only: the workers' supervisor imports this module without gRPC
    from signer.audit_space import AuditSpace
    from signer.responder_state import ResponderState
    from signer.rotation import Rotator
    from signer.status_verify import StatusVerifier

log = logging.getLogger("ocsp-signer")


class AuditCounts(Protocol):
    write_seconds: Buckets
    write_failures: int


class SigningCounts(Protocol):
    """What the metrics read of signer.service.SignerService (a protocol: no import cycle)."""

    signatures: dict[tuple[str, str], int]
    in_flight: int
    sign_seconds: Buckets
    batch_sizes: Buckets

    @property
    def audit(self) -> AuditCounts: ...

# Gauges each worker reports for the same thing (the same responders, audit directory, status files):
# merged as the maximum, not the sum.
SAME_EVERYWHERE = frozenset({
    "ocsp_signer_responder_generation", "ocsp_signer_responder_not_after_seconds",
    "ocsp_signer_responder_expiry_seconds", "ocsp_signer_responder_expiring", "ocsp_signer_audit_free_bytes",
    "ocsp_signer_audit_min_free_bytes", "ocsp_signer_audit_space_low", "ocsp_signer_status_checked",
})


def families(state: ResponderState, rotator: Rotator, space: AuditSpace | None,
             verifier: StatusVerifier | None = None, service: SigningCounts | None = None) -> Iterator[Metric]:
    now = rotator.clock.now()
    warn = rotator.expiry_warning.total_seconds()
    generation, not_after, left, expiring = {}, {}, {}, {}
    for r in state.current:
        key = (r.name,)
        seconds = (r.not_after - now).total_seconds()
        generation[key] = r.generation
        not_after[key] = int(r.not_after.timestamp())
        left[key] = int(seconds)
        expiring[key] = 1 if seconds <= warn else 0
    ca = ("ca",)
    yield gauge("ocsp_signer_responder_generation", "Generation of the CA's current responder.", ca, generation)
    yield gauge("ocsp_signer_responder_not_after_seconds", "notAfter of the responder certificate (Unix time).",
                ca, not_after)
    yield gauge("ocsp_signer_responder_expiry_seconds", "Seconds until the responder certificate's notAfter "
                "(negative once expired).", ca, left)
    yield gauge("ocsp_signer_responder_expiring", "1 within [policy] expiry_warning of notAfter, or past it.",
                ca, expiring)
    yield counter("ocsp_signer_rotations", "Responder changes: kind rotate (Admin RPC) or reload (SIGHUP); "
                  "result ok, refused, unchanged.", ("kind", "result"), dict(rotator.counts))
    yield gauge("ocsp_signer_watch_streams", "Watch streams open now ([listen] max_watchers).", (),
                state.watchers)
    yield counter("ocsp_signer_watch_refused", "Watch calls refused at [listen] max_watchers.", (),
                  state.watchers_refused)
    if space is not None:
        if space.free_bytes is not None:
            yield gauge("ocsp_signer_audit_free_bytes", "Free bytes in [audit] dir at the last check.", (),
                        space.free_bytes)
        yield gauge("ocsp_signer_audit_min_free_bytes", "[audit] min_free.", (), space.min_free)
        yield gauge("ocsp_signer_audit_space_low", "1 while free space is below min_free (or cannot be read).",
                    (), 1 if space.low else 0)
    if verifier is not None:
        names = sorted(verifier.sources)
        yield gauge("ocsp_signer_status_checked", "1 for each CA whose statuses are checked "
                    "([policy] verify_status).", ca, {(n,): 1 for n in names})
        yield counter("ocsp_signer_status_refusals", "Sign requests refused: the signer's own status data "
                      "disagreed.", ca, {(n,): verifier.refusals[n] for n in names})
    if service is not None:
        yield counter("ocsp_signer_signatures", "Requests to sign, by CA (empty: none the policy accepted) and "
                      "result: ok, refused (policy, status data, in-flight bound), error (token, audit log).",
                      ("ca", "result"), dict(service.signatures))
        yield gauge("ocsp_signer_signatures_in_flight", "Signatures accepted and not yet answered.", (),
                    service.in_flight)
        yield histogram("ocsp_signer_sign_seconds", "One signature in the token.", (), service.sign_seconds)
        yield histogram("ocsp_signer_batch_size", "Requests per Sign or SignBatch call.", (), service.batch_sizes)
        audit = service.audit
        yield histogram("ocsp_signer_audit_write_seconds", "One audit group write and fsync.", (),
                        audit.write_seconds)
        yield counter("ocsp_signer_audit_write_failures", "Audit group writes that failed (their signatures "
                      "were refused).", (), audit.write_failures)


def render(state: ResponderState, rotator: Rotator, space: AuditSpace | None,
           verifier: StatusVerifier | None = None, service: SigningCounts | None = None) -> str:
    """The exposition text of one signer process."""
    registry = registry_of(lambda: families(state, rotator, space, verifier, service))
    return render_registry(registry).decode()


async def start_metrics(address: str, state: ResponderState, rotator: Rotator, space: AuditSpace | None,
                        verifier: StatusVerifier | None = None,
                        service: SigningCounts | None = None) -> asyncio.AbstractServer:
    server = await start_endpoint(lambda: render(state, rotator, space, verifier, service).encode(),
                                  address=address)
    log.info("metrics on http://%s/metrics", address)
    return server


def merged(texts: list[str], failed: int) -> bytes:
    """The supervisor's exposition: its workers' families merged, and how many answered."""
    return render_merged(texts, SAME_EVERYWHERE, [
        gauge("ocsp_signer_metrics_workers", "Signer workers whose metrics this scrape merged.", (), len(texts)),
        gauge("ocsp_signer_metrics_workers_missing", "Signer workers that did not answer this scrape (starting, "
              "restarting, stuck).", (), failed)])
