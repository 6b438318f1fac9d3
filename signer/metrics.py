"""A minimal Prometheus text endpoint for the signer (``[metrics] address``): GET /metrics.

Gauges are computed at scrape time from the current responder set and the clock, so there is
nothing to update on the signing path.

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

Responders and Watch streams come from ``signer.responder_state.ResponderState``, rotation counts and
the expiry warning from the Rotator. The audit space figures are those of the signer's periodic check
(signer.audit_space), not read at scrape time.
"""

from __future__ import annotations

import asyncio
import logging

from signer.audit_space import AuditSpace
from signer.responder_state import ResponderState
from signer.rotation import Rotator
from signer.status_verify import StatusVerifier

log = logging.getLogger("ocsp-signer")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(state: ResponderState, rotator: Rotator, space: AuditSpace | None,
           verifier: StatusVerifier | None = None) -> str:
    now = rotator.clock.now()
    warn = rotator.expiry_warning.total_seconds()
    lines = []
    series: dict[str, list[str]] = {
        "ocsp_signer_responder_generation": [],
        "ocsp_signer_responder_not_after_seconds": [],
        "ocsp_signer_responder_expiry_seconds": [],
        "ocsp_signer_responder_expiring": [],
    }
    for r in state.current:
        ca = f'{{ca="{_label(r.name)}"}}'
        left = (r.not_after - now).total_seconds()
        series["ocsp_signer_responder_generation"].append(f"{ca} {r.generation}")
        series["ocsp_signer_responder_not_after_seconds"].append(f"{ca} {int(r.not_after.timestamp())}")
        series["ocsp_signer_responder_expiry_seconds"].append(f"{ca} {int(left)}")
        series["ocsp_signer_responder_expiring"].append(f"{ca} {1 if left <= warn else 0}")
    for name, values in series.items():
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{v}" for v in values)
    lines.append("# TYPE ocsp_signer_rotations_total counter")
    for (kind, result), n in sorted(rotator.counts.items()):
        lines.append(f'ocsp_signer_rotations_total{{kind="{kind}",result="{result}"}} {n}')
    lines += ["# TYPE ocsp_signer_watch_streams gauge", f"ocsp_signer_watch_streams {state.watchers}",
              "# TYPE ocsp_signer_watch_refused_total counter",
              f"ocsp_signer_watch_refused_total {state.watchers_refused}"]
    if space is not None:
        lines.append("# TYPE ocsp_signer_audit_free_bytes gauge")
        if space.free_bytes is not None:
            lines.append(f"ocsp_signer_audit_free_bytes {space.free_bytes}")
        lines += ["# TYPE ocsp_signer_audit_min_free_bytes gauge", f"ocsp_signer_audit_min_free_bytes {space.min_free}",
                  "# TYPE ocsp_signer_audit_space_low gauge", f"ocsp_signer_audit_space_low {1 if space.low else 0}"]
    if verifier is not None:
        lines.append("# TYPE ocsp_signer_status_checked gauge")
        lines += [f'ocsp_signer_status_checked{{ca="{_label(name)}"}} 1' for name in sorted(verifier.sources)]
        lines.append("# TYPE ocsp_signer_status_refusals_total counter")
        lines += [f'ocsp_signer_status_refusals_total{{ca="{_label(name)}"}} {verifier.refusals[name]}'
                  for name in sorted(verifier.sources)]
    return "\n".join(lines) + "\n"


async def start_metrics(address: str, state: ResponderState, rotator: Rotator,
                        space: AuditSpace | None, verifier: StatusVerifier | None = None) -> asyncio.AbstractServer:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if head.startswith(b"GET ") and target.split(b"?")[0] == b"/metrics":
                body, status = render(state, rotator, space, verifier).encode(), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, int(port))
    log.info("metrics on http://%s/metrics", address)
    return server
