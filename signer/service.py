"""The signer's gRPC service: Sign, Responders, Health (grpc.aio).

Every PKCS#11 call runs in one dedicated thread (``pkcs11`` executor): python-pkcs11 initialises
the module without OS locking, so the token must never be entered by two threads at once, and a
second signing thread would not sign faster anyway. Parallelism comes from more processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.unknown_fields import UnknownFieldSet

from shared.clock import Clock, SystemClock
from shared.config import ConfigError
from shared.fdlimit import log_open_files_limit
from shared.metrics import BATCH_BOUNDS, Buckets
from shared.ratelog import CountedLog, RateLimitedLog
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from shared.rpc.metadata import MAX_BATCH, REFUSED, STATUS_DISAGREES
from signer import startup
from signer.admin import AdminPlane
from signer.audit import (
    AuditLog,
    AuditRecord,
    AuditUnavailable,
    Pkcs11CheckpointSigner,
    RefusalRecord,
    SignedStatus,
)
from signer.audit_space import AuditSpace
from signer.config import DEFAULT_MAX_IN_FLIGHT, SignerConfig, load_signer_config
from signer.control import ControlChannel
from signer.core_log import core_lines_held, core_reason
from signer.local_callers import LocalListener
from signer.local_callers import caller as local_caller
from signer.policy import Policy, PolicyError, SignJob, check_known_fields, largest_sign_batch_size
from signer.responder_state import ResponderState, WatchersFull
from signer.responders import ResponderSet
from signer.status_verify import StatusVerifier
from signer.tls import add_port, local_listener, transport_interceptors, transport_summary
from signer.token import Token, TokenError
from signer.worker_link import WorkerLink, WorkerRole, responders

log = logging.getLogger("ocsp-signer")

REFUSAL_LOG_INTERVAL = 10.0  # seconds between two ERROR lines about one caller's refusals for one CA
OVERLOAD_LOG_INTERVAL = 5.0  # seconds between two lines about requests refused at max_signatures_in_flight
# Seconds between two lines about signatures refused for one cause (audit log not writable, token not
# available): a full disk refuses every request, and each must not cost a line.
UNAVAILABLE_LOG_INTERVAL = 5.0

SHUTDOWN_GRACE = 5.0  # seconds in-flight RPCs get to finish on SIGTERM/SIGINT
MAX_PING_STRIKES = 2  # gRPC's default, stated: too-early keepalive pings tolerated before GOAWAY
# With Admin allowed on the main listener ([admin] allowed_clients), a RotateRequest (a PEM or DER
# certificate) must fit as well as the largest SignRequest.
MIN_ADMIN_MESSAGE_BYTES = 64 << 10


def receive_limit(config: SignerConfig) -> int:
    """The largest message the listener accepts (grpc.max_receive_message_length): the largest valid
    SignBatchRequest, ``policy.max_batch`` of the largest valid SignRequests for ``policy.max_cert_ids``
    (signer.policy.largest_sign_batch_size; a unary SignRequest is smaller), plus a quarter and 1 KiB
    for encoders that spend a few more bytes than ours; at least MIN_ADMIN_MESSAGE_BYTES when Admin
    calls are allowed on the listener. Larger messages are refused RESOURCE_EXHAUSTED by gRPC before
    the servicer sees them. About 219 KB with the defaults (64 requests of up to 8 CertIDs)."""
    largest = largest_sign_batch_size(config.policy.max_batch, config.policy.max_cert_ids)
    limit = largest + largest // 4 + 1024
    if config.admin.allowed_clients:
        limit = max(limit, MIN_ADMIN_MESSAGE_BYTES)
    return limit


def client_identity(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, for the audit log: with mTLS, the identity the client-identity interceptor let in
    (the allow-listed ``cn:ocsp-frontend`` form, signer.tls); else the transport: ``unix:`` for a caller
    on the unix socket (whose pid, uid and gid the record carries: ``local_caller()``), the peer of a
    plaintext loopback connection."""
    from signer.tls import client_identity as tls_identity

    identity = tls_identity(context)
    if not identity.startswith("plaintext:"):
        return identity
    if local_caller() is not None:
        return "unix:"  # gRPC's peer is the relay's name for the connection, which says nothing
    peer = context.peer() or "unknown"
    return peer if peer.startswith(("unix", "ipv4", "ipv6")) else "unknown"


@dataclass(frozen=True, slots=True)
class Failure:
    """A request not signed: the status code and message a unary Sign aborts with."""

    code: grpc.StatusCode
    message: str
    error: bool = False  # the signer failed (token, audit log, a bug), not a refusal of the request


@dataclass(frozen=True, slots=True)
class Signed:
    """A request signed (and its audit record durable): what its SignReply carries."""

    der: bytes  # the whole DER OCSPResponse
    generation: int
    fingerprint: str  # the responder certificate's SHA-256, hex


def _caller_ids() -> dict[str, int | None]:
    """The audit record's pid, uid and gid: the unix-socket caller's, as the kernel gave them; None over TCP."""
    ids = local_caller()
    return {"pid": None if ids is None else ids.pid, "uid": None if ids is None else ids.uid,
            "gid": None if ids is None else ids.gid}


def _signed_statuses(job: SignJob) -> tuple[SignedStatus, ...]:
    return tuple(SignedStatus(st.cert_id.serial.hex(), st.status.value) for st in job.statuses)


class SignerService(pb_grpc.SignerServicer):
    def __init__(self, *, state: ResponderState, token: Token, policy: Policy, clock: Clock,
                 executor: ThreadPoolExecutor, audit: AuditLog, token_name: str = "", max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.state = state  # the current responders (each RPC reads ``state.current`` once) and Watch
        self.token = token
        self.policy = policy
        self.clock = clock
        self.executor = executor
        self.audit = audit
        self.token_name = token_name
        self.serving = True
        self.audit_space: AuditSpace | None = None
        # The signer's own status data ([policy] verify_status), set by serve(); None = not checked.
        self.verifier: StatusVerifier | None = None
        self._refusal_log = RateLimitedLog(log, REFUSAL_LOG_INTERVAL, time.monotonic)
        # Back-pressure: at most ``max_in_flight`` signatures accepted and not yet answered in this
        # process (signer workers: in each); past it a request fails RESOURCE_EXHAUSTED at once (the
        # frontend asks its next signer, else answers tryLater) instead of queueing for the token.
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.overloaded = 0  # requests refused at the bound (metrics)
        # Metrics (signer.metrics reads them at scrape time): plain values, nothing locks per signature.
        self.signatures: dict[tuple[str, str], int] = {}  # (CA or "", ok / refused / error) -> requests
        self.sign_seconds = Buckets()  # each token signature
        self.batch_sizes = Buckets(BATCH_BOUNDS)  # requests per Sign (1) or SignBatch call
        self._overload_log = RateLimitedLog(log, OVERLOAD_LOG_INTERVAL, time.monotonic)  # set by serve(); Health reads it
        # Requests refused because the audit log cannot record them or the token cannot sign: one line
        # per cause and interval, with the count (``unavailable.total``: all of them, for a metric).
        self.unavailable = CountedLog(log, UNAVAILABLE_LOG_INTERVAL, time.monotonic,
                                      first="refused %d signature(s): %s (further refusals for this cause are "
                                            "counted, one line per interval)",
                                      summary="refused %d signature(s) in the last %.0f s: %s",
                                      schedule=lambda delay, callback: asyncio.get_running_loop().call_later(
                                          delay, callback))

    async def Sign(self, request: pb.SignRequest, context: grpc.aio.ServicerContext) -> pb.SignReply:
        (outcome,) = await self._sign_batch([request], client_identity(context))
        if isinstance(outcome, Signed):
            return pb.SignReply(ocsp_response=outcome.der, generation=outcome.generation,
                                responder_fingerprint=outcome.fingerprint)
        # Marked as the signer's own answer, so the frontend never mistakes it for a lost connection.
        await context.abort(outcome.code, outcome.message, trailing_metadata=((REFUSED, outcome.code.name),))
        raise AssertionError("unreachable")  # abort raises

    async def SignBatch(self, request: pb.SignBatchRequest,
                        context: grpc.aio.ServicerContext) -> pb.SignBatchReply:
        unknown = UnknownFieldSet(request)
        if len(unknown):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown field {unknown[0].field_number} of SignBatchRequest: this signer does "
                                "not know it (a frontend newer than the signer? upgrade signers first)",
                                trailing_metadata=((REFUSED, grpc.StatusCode.INVALID_ARGUMENT.name),))
        n, limit = len(request.requests), self.policy.config.max_batch
        if not 1 <= n <= limit:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if n else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, f"requests: {n} entries; 1..{limit} allowed ([policy] max_batch)",
                                trailing_metadata=((REFUSED, code.name), (MAX_BATCH, str(limit))))
        outcomes = await self._sign_batch(list(request.requests), client_identity(context))
        # Filled in place: building a SignReply and then a SignBatchItem around it copied every response.
        reply = pb.SignBatchReply()
        add = reply.items.add
        for o in outcomes:
            if isinstance(o, Signed):
                signed = add().reply
                signed.ocsp_response, signed.generation, signed.responder_fingerprint = (
                    o.der, o.generation, o.fingerprint)
            else:
                error = add().error
                error.code, error.message, error.refused = o.code.value[0], o.message, True
        return reply

    async def _sign_batch(self, requests: list[pb.SignRequest], client: str) -> list[Signed | Failure]:
        """Each request checked on its own (policy, then the status check); the accepted ones signed in
        one hop to the token thread; every audit record of the batch (signatures and refusals) appended
        as one group, all durable before any reply is returned. One outcome per request, in order."""
        outcomes: list[Signed | Failure | None] = [None] * len(requests)
        jobs: list[tuple[int, SignJob]] = []
        responders = self.state.current  # read once: the whole batch is judged against one set
        for i, request in enumerate(requests):
            try:
                jobs.append((i, self._check(request, responders)))
            except Exception as e:  # noqa: BLE001 - this request alone fails; _failure logs a bug
                outcomes[i] = self._failure(e, request.request_id)
        names = {i: job.responder.name for i, job in jobs}
        room = max(0, self.max_in_flight - self.in_flight)
        if len(jobs) > room:
            for i, job in jobs[room:]:
                outcomes[i] = Failure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"{self.in_flight} signatures in flight in this signer process, the most it "
                                      "takes ([listen] max_signatures_in_flight); try again later")
            refused = len(jobs) - room
            self.overloaded += refused
            self._overload_log.log(logging.WARNING, "in flight",
                                   "refused %d request%s at once: %d signatures in flight, the most this signer "
                                   "process takes ([listen] max_signatures_in_flight)", refused,
                                   "" if refused == 1 else "s", self.in_flight)
            jobs = jobs[:room]
        self.in_flight += len(jobs)
        try:
            await self._sign_jobs(requests, jobs, outcomes, client)
        finally:
            self.in_flight -= len(jobs)
        assert all(o is not None for o in outcomes)
        self._count(outcomes, names)  # type: ignore[arg-type]
        return outcomes  # type: ignore[return-value]

    def _count(self, outcomes: list[Signed | Failure], names: dict[int, str]) -> None:
        """The metrics of one call: its size, and each request by CA ("" when it named none the
        policy accepted) and result."""
        self.batch_sizes.observe(len(outcomes))
        counts = self.signatures
        for i, o in enumerate(outcomes):
            key = (names.get(i, ""), "ok" if isinstance(o, Signed) else "error" if o.error else "refused")
            counts[key] = counts.get(key, 0) + 1

    async def _sign_jobs(self, requests: list[pb.SignRequest], jobs: list[tuple[int, SignJob]],
                         outcomes: list[Signed | Failure | None], client: str) -> None:
        """The admitted jobs of ``_sign_batch``: status checks, signatures, audit records; fills
        ``outcomes``."""
        records: list[tuple[int, Any]] = []  # (request index, the audit record it needs)
        accepted: list[tuple[int, SignJob]] = []
        for i, job in jobs:
            # One job after the other, each awaited as it is (no task per job): the check answers from
            # memory unless its data disagrees, and then re-reads the files under the source's lock.
            try:
                problem = await self._problem(job)
            except Exception as e:  # noqa: BLE001 - this request alone fails; _failure logs a bug
                outcomes[i] = self._failure(e, job.request_id)
                continue
            if problem is not None:
                record, refusal = self._refusal(job, client, problem)
                records.append((i, record))
                outcomes[i] = self._failure(refusal, job.request_id)
            else:
                accepted.append((i, job))
        produced_at = self.clock.now()
        built = [(i, job, job.responder.template.response_data(produced_at, job.statuses, job.nonce))
                 for i, job in accepted]
        signatures: list[bytes | Exception] = []
        if built:
            loop = asyncio.get_running_loop()
            signatures = await loop.run_in_executor(
                self.executor, self._sign_all, [(job.responder.key_label, job.responder.algorithm, tbs)
                                                for _, job, tbs in built])
        ids = _caller_ids()
        replies: list[tuple[int, Signed]] = []
        for (i, job, tbs), signature in zip(built, signatures):
            if isinstance(signature, Exception):
                outcomes[i] = self._failure(signature, job.request_id)
                continue
            r = job.responder
            der = r.template.signed(tbs, signature)
            records.append((i, AuditRecord(
                time=produced_at, client=client, request_id=job.request_id, issuer_name=r.name,
                issuer_id=r.issuer_id, statuses=_signed_statuses(job), nonce=job.nonce is not None,
                responder_fingerprint=r.fingerprint, key_label=r.key_label, generation=r.generation,
                response_sha256=hashlib.sha256(der).hexdigest(), **ids)))
            replies.append((i, Signed(der, r.generation, r.fingerprint)))
        # Invariant: every signature is durably in the audit log before its response leaves the signer.
        # The batch's records go as one group (AuditLog group-commits appends that arrive together);
        # when any of them fails, every item that needed a record fails UNAVAILABLE (fail closed).
        if records:
            written = await asyncio.gather(*(self.audit.append(rec) for _, rec in records), return_exceptions=True)
            failed = next((w for w in written if isinstance(w, BaseException)), None)
            if failed is not None:
                if not isinstance(failed, Exception):
                    raise failed  # cancellation: nothing leaves
                for i, _ in records:
                    outcomes[i] = self._failure(failed, requests[i].request_id)
                replies = []
        for i, reply in replies:
            outcomes[i] = reply

    def _check(self, request: pb.SignRequest, responders: ResponderSet) -> SignJob:
        if not self.serving:
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, "the signer is shutting down")
        return self.policy.check(request, responders)

    async def _problem(self, job: SignJob) -> str | None:
        return None if self.verifier is None else await self.verifier.problem(job)

    def _sign_all(self, items: list[tuple[str, Any, bytes]]) -> list[bytes | Exception]:
        """On the token thread: sign every (key label, algorithm, data) in turn, one hop for the batch; a
        failure is that item's alone."""
        out: list[bytes | Exception] = []
        seconds = self.sign_seconds
        for key_label, algorithm, data in items:
            started = time.perf_counter()
            try:
                out.append(self.token.sign(key_label, algorithm, data))
            except Exception as e:  # noqa: BLE001 - this item alone fails; _failure maps and logs it
                out.append(e)
            seconds.observe(time.perf_counter() - started)
        return out

    def _failure(self, e: BaseException, request_id: str) -> Failure:
        """The gRPC status a failed request gets (what Sign aborts with, what SignBatch's item carries)."""
        if isinstance(e, PolicyError):
            return Failure(e.code, e.message)
        if isinstance(e, TokenError):
            self._refused_unavailable(f"token not available: {e}")
            return Failure(grpc.StatusCode.UNAVAILABLE, f"token not available: {e}", error=True)
        if isinstance(e, AuditUnavailable):
            # Fail closed: the signature exists but is not durably logged, so it never leaves.
            self._refused_unavailable(f"audit log not writable: {e.reason}")
            return Failure(grpc.StatusCode.UNAVAILABLE, f"audit log not writable: {e.reason}", error=True)
        if not isinstance(e, Exception):
            raise e
        log.error("Sign failed (request_id %r)", request_id, exc_info=e)
        return Failure(grpc.StatusCode.INTERNAL, "internal error in the signer (logged)", error=True)

    def _refused_unavailable(self, cause: str) -> None:
        """One request refused for ``cause``: counted, and logged once per cause and interval
        (``CountedLog``, which logs the count of a flood that stops by itself)."""
        self.unavailable.log(logging.ERROR, cause)

    def _refusal(self, job: SignJob, client: str, problem: str) -> tuple[RefusalRecord, PolicyError]:
        """A status the signer's own data contradicts: logged, a refusal record for the audit log (nothing
        was signed), and the refusal (STATUS_DISAGREES: the frontend answers tryLater). When the record
        cannot be written the request fails UNAVAILABLE instead, as any other audit failure."""
        r = job.responder
        self._refusal_log.log(logging.ERROR, (client, r.name),
                              "REFUSED to sign for %s, CA %r, request %r: %s (the signer's own status data "
                              "disagrees; a frontend reading other data, or lying)", client, r.name,
                              job.request_id, problem)
        record = RefusalRecord(
            time=self.clock.now(), client=client, request_id=job.request_id, issuer_name=r.name,
            issuer_id=r.issuer_id, statuses=_signed_statuses(job), reason=problem, **_caller_ids())
        return record, PolicyError(STATUS_DISAGREES, f"refused: {problem} (the signer's own status data disagrees)")

    async def Responders(self, request: pb.RespondersRequest,
                         context: grpc.aio.ServicerContext) -> pb.RespondersReply:
        await _refuse_unknown_fields(request, context)
        return pb.RespondersReply(responders=[
            pb.Responder(issuer_certificate=r.issuer_cert, responder_certificate=r.cert,
                         generation=r.generation, name=r.name, not_before=int(r.not_before.timestamp()),
                         not_after=int(r.not_after.timestamp()),
                         expires_in=int((r.not_after - self.clock.now()).total_seconds()),
                         responder_fingerprint=r.fingerprint, key_label=r.key_label)
            for r in self.state.current])

    async def Watch(self, request: pb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ResponderState]:
        await _refuse_unknown_fields(request, context)
        try:
            async for state in self.state.watch():
                yield state
        except WatchersFull as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        await _refuse_unknown_fields(request, context)
        if not self.serving:
            return pb.HealthReply(serving=False, detail="shutting down")
        # Not serving while the last signature failed in the token or the audit log cannot be
        # written: Sign would fail (both recover by themselves on the next successful attempt).
        token_error = self.token.last_error
        if token_error:
            return pb.HealthReply(serving=False, detail=f"token: {token_error}")
        audit_error = getattr(self.audit, "failure", None)
        if audit_error:
            return pb.HealthReply(serving=False, detail=f"audit log not writable: {audit_error}")
        # Low on disk: still signing, but not ready, so load balancers move away before the log fills.
        space_problem = self.audit_space.problem() if self.audit_space is not None else None
        if space_problem:
            return pb.HealthReply(serving=False, detail=f"audit disk: {space_problem}")
        rs = self.state.current
        detail = f"token {self.token_name!r} logged in, {len(rs)} responders, generation {rs.generation}"
        return pb.HealthReply(serving=True, detail=detail)


async def _refuse_unknown_fields(request: Any, context: grpc.aio.ServicerContext) -> None:
    """Abort INVALID_ARGUMENT when ``request`` carries fields proto/signer.proto does not define (Sign
    checks its own in Policy.check)."""
    try:
        check_known_fields(request)
    except PolicyError as e:
        await context.abort(e.code, e.message)


class SignerServer:
    """The running gRPC server with what it owns (token, executor). ``stop()`` releases all."""

    def __init__(self, server: grpc.aio.Server, service: SignerService, *, owns_token: bool) -> None:
        self.server = server
        self.service = service
        self._owns_token = owns_token
        self.admin: AdminPlane | None = None
        self.local: LocalListener | None = None  # a unix: listen.address: its public socket and relay
        self._reloads: set[asyncio.Task[None]] = set()  # status reloads SIGHUP started

    async def stop(self, grace: float | None = SHUTDOWN_GRACE, *, failed_start: bool = False) -> None:
        """Stop serving and release everything. ``failed_start``: ``serve`` could not finish starting;
        the audit log is abandoned (``AuditLog.abandon``: a file no record went into is removed)."""
        self.service.serving = False
        if self.service.audit_space is not None:
            await self.service.audit_space.stop()
        self.service.state.close()  # ends Watch streams, which would otherwise hold the grace
        if self.service.verifier is not None:
            await self.service.verifier.close()
        if self.admin is not None:
            await self.admin.stop()
        if self.local is not None:
            self.local.stop_accepting()  # connections already open are relayed through the grace
        await self.server.stop(grace)
        if self.local is not None:
            await self.local.close()
        self.service.unavailable.close()  # the counts still held
        try:
            if failed_start:
                await self.service.audit.abandon()
            else:
                await self.service.audit.close()  # a final checkpoint covering every record
        except AuditUnavailable as e:
            log.error("audit log: final checkpoint failed: %s", e.reason)
        loop = asyncio.get_running_loop()
        if self._owns_token:
            await loop.run_in_executor(self.service.executor, self.service.token.close)
        self.service.executor.shutdown(wait=False)

    def on_sighup(self) -> None:
        """SIGHUP: the admin plane re-reads signer.toml and the [responder] tables; the signer's own
        status data is re-read at once (as the frontend does on its SIGHUP)."""
        if self.admin is not None:
            self.admin.on_sighup()
        verifier = self.service.verifier
        if verifier is not None:
            task = asyncio.get_running_loop().create_task(verifier.reload())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def open_audit(config: SignerConfig, audit_signer: Pkcs11CheckpointSigner, clock: Clock,
                     executor: ThreadPoolExecutor) -> AuditLog:
    """Open this writer's audit chain for writing (signer.startup.open_audit). A module attribute that
    ``serve`` looks up at each call, so the audit-off benchmark can replace it."""
    return await startup.open_audit(config, audit_signer, clock, executor)


def server_options(config: SignerConfig, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """gRPC server channel arguments.

    Keepalive: the signer's half of an agreement with the frontend's channel options
    (frontend.signer_client.channel_options): a client may ping every ``listen.min_ping_interval`` (the
    frontend pings every ``[signer] keepalive``, 30 s by default, and on a quiet connection too), and a
    connection with no call in flight may be pinged as well. Pings closer together are strikes; after
    ``max_ping_strikes`` of them gRPC sends GOAWAY "too_many_pings" and the calls on that connection fail
    (the frontend then retries once over a new connection).

    Bounds (``[listen]`` limits): the receive limit (``receive_limit``), calls per connection, client
    connections, and the connection age after which a connection is recycled. The limit on calls in
    progress is not a channel argument: ``maximum_concurrent_rpcs`` below. ``reuse_port``: a signer
    worker shares its TCP port with the other workers (SO_REUSEPORT; else a port in use is an error)."""
    limits = config.listen.limits
    return [
        ("grpc.max_receive_message_length", receive_limit(config)),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.http2.min_ping_interval_without_data_ms",
         int(config.listen.min_ping_interval.total_seconds() * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.max_connection_age_ms", int(limits.max_connection_age.total_seconds() * 1000)),
        ("grpc.max_connection_age_grace_ms", int(limits.max_connection_age_grace.total_seconds() * 1000)),
    ]


def limits_summary(config: SignerConfig) -> str:
    limits, a = config.listen.limits, config.audit
    return (f"messages up to {receive_limit(config)} bytes, {limits.max_concurrent_rpcs} calls and "
            f"{limits.max_watchers} Watch streams at once, {limits.max_signatures_in_flight} signatures in flight, "
            f"{limits.max_concurrent_streams} calls per connection, "
            f"{limits.max_connections} connections, each recycled after {limits.max_connection_age} "
            f"(+{limits.max_connection_age_grace}); audit.min_free {a.min_free} bytes")


def maximum_concurrent_rpcs(config: SignerConfig) -> int:
    """gRPC's one limit on calls in progress counts every call: unary calls get ``max_concurrent_rpcs``
    of it and Watch streams the ``max_watchers`` on top, which ResponderState enforces by itself, so
    however many streams are open the unary calls always have their share."""
    limits = config.listen.limits
    return limits.max_concurrent_rpcs + limits.max_watchers


async def serve(config: SignerConfig, *, token: Token | None = None, clock: Clock | None = None,
                worker: WorkerRole | None = None) -> tuple[SignerServer, str]:
    """Log in (unless given a token), run every start-up check (``signer.startup.prepare``, as
    ``ocsp-signer --check`` does), open the audit log, start listening. ``worker``: this process is
    a worker of a supervisor (signer.workers; ``config`` is its ``for_worker`` view): it shares the
    listen address, and its responder changes come from the supervisor (signer.worker_link).

    Returns the server and the address it is bound to (the real port when the config asked for 0).
    Raises ConfigError for anything the operator must fix; nothing is left running then.
    """
    clock = clock or SystemClock()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
    owns_token = token is None
    try:
        # Every start-up check, the same ones `ocsp-signer --check` runs; a token opened there is
        # closed there when a check fails.
        ready = await startup.prepare(config, token=token, clock=clock, executor=executor, open_log=open_audit,
                                      generation=1 if worker is None else worker.generation,
                                      worker=worker is not None)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    try:
        return await _start(config, ready, clock, executor, worker, owns_token=owns_token)
    except BaseException:
        if ready.audit is not None and not ready.audit.closed:  # failed before the server existed
            await ready.audit.abandon()
            if owns_token:
                await asyncio.get_running_loop().run_in_executor(executor, ready.token.close)
            executor.shutdown(wait=False)
        raise


async def _start(config: SignerConfig, ready: startup.Prepared, clock: Clock, executor: ThreadPoolExecutor,
                 worker: WorkerRole | None, *, owns_token: bool) -> tuple[SignerServer, str]:
    """``serve`` once every start-up check passed: the service, the server, the listeners. A failure
    stops what was started (the audit log abandoned: ``SignerServer.stop(failed_start=True)``)."""
    token, responders, audit = ready.token, ready.responders, ready.audit
    if worker is not None and worker.generations:  # a restarted worker: the running workers' generations
        responders = ResponderSet.of([dataclasses.replace(r, generation=worker.generations.get(r.name, r.generation))
                                      for r in responders], worker.generation)
    assert audit is not None
    for r in responders:
        now = clock.now()
        if not r.not_before <= now <= r.not_after:
            log.warning("responder certificate of %r is not valid now (%s to %s); its requests will fail",
                        r.name, r.not_before, r.not_after)

    state = ResponderState(responders, max_watchers=config.listen.limits.max_watchers)
    service = SignerService(state=state, token=token, policy=Policy(config.policy, clock),
                            clock=clock, executor=executor, audit=audit,
                            token_name=str(token.label or ""),
                            max_in_flight=config.listen.limits.max_signatures_in_flight)
    # Every signature in flight appends one audit record: a group write waits for those, and only those.
    audit.expected = lambda: service.in_flight
    # Free space in the audit directory, read once now (an ERROR before the first request when it is
    # low already), then every space_check_interval.
    audit_space = AuditSpace(config.audit.dir, config.audit.min_free,
                             interval=config.audit.space_check_interval.total_seconds())
    service.audit_space = audit_space
    service.verifier = ready.status
    audit_space.check()
    local = local_listener(config) if worker is None else local_listener(config, worker.number, worker.public)
    server = grpc.aio.server(interceptors=transport_interceptors(config, local),
                             options=server_options(config, reuse_port=worker is not None),
                             maximum_concurrent_rpcs=maximum_concurrent_rpcs(config))
    pb_grpc.add_SignerServicer_to_server(service, server)
    wrapper = SignerServer(server, service, owns_token=owns_token)
    wrapper.admin = AdminPlane.attach(server, state, audit_space, config, token, executor, clock)
    wrapper.admin.verifier = service.verifier
    wrapper.admin.service = service
    if worker is not None:
        number = worker.number
        wrapper.admin.rotator.reader = lambda path: load_signer_config(path).for_worker(number, config.listen.port)
        link = WorkerLink(worker.control, wrapper.admin.rotator, service.verifier, number)
        link.metrics = wrapper.admin.metrics_text
    wrapper.local = local
    core_lines: list[str] = []
    try:
        if local is not None:
            local.prepare()
        with core_lines_held() as core_lines:  # a failed bind: our line only, not core's too
            port = add_port(server, config, local)
    except (RuntimeError, OSError, ValueError) as e:
        await wrapper.stop(None, failed_start=True)
        why = startup.tcp_bind_problem(config) or core_reason(core_lines) or getattr(e, "strerror", None) or e
        raise ConfigError(config.file, "listen.address", f"cannot listen on {config.listen.address}: {why}") from None
    if port == 0:
        await wrapper.stop(None, failed_start=True)
        raise ConfigError(config.file, "listen.address", f"cannot listen on {config.listen.address}")
    await server.start()
    audit_space.start()
    if service.verifier is not None:
        service.verifier.start()
    try:
        if local is not None:
            await local.start()
    except OSError as e:
        await wrapper.stop(None, failed_start=True)
        raise ConfigError(config.file, "listen.address",
                          f"cannot listen on {config.listen.address}: {e.strerror or e}") from None
    try:
        await wrapper.admin.start()
    except ConfigError:
        await wrapper.stop(None, failed_start=True)
        raise
    address = config.listen.at_port(port)
    log.info("limits: %s", limits_summary(config))
    log.info("serving on %s (%s): %d responders (%s), token %r", address, transport_summary(config),
             len(responders), ", ".join(f"{r.name}: {r.algorithm.value}" for r in responders), service.token_name)
    log_open_files_limit(log)  # raised at start (signer.__main__)
    return wrapper, address


async def run(config: SignerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    server, _address = await serve(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    received: list[Any] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if server.admin is not None:
        loop.add_signal_handler(signal.SIGHUP, server.on_sighup)
    await stopping.wait()
    log.info("%s: stopping (grace %ss)", received[0].name, SHUTDOWN_GRACE)
    await server.stop(SHUTDOWN_GRACE)
    log.info("stopped")


async def run_worker(config: SignerConfig, number: int, generation: int, control_fd: int,
                     listen_fd: int | None, generations: dict[str, int] | None = None) -> None:
    """A signer worker (signer.workers): serve ``config`` (its ``for_worker`` view) until SIGTERM, or
    until the supervisor is gone (its control channel ends), then stop gracefully. SIGHUP and SIGINT
    are the supervisor's (ignored here): it reloads, or stops, every worker together."""
    import socket as socket_module

    control = ControlChannel(socket_module.socket(fileno=control_fd), name=f"worker {number}")
    public = socket_module.socket(fileno=listen_fd) if listen_fd is not None else None
    await control.start()
    try:
        role = WorkerRole(number=number, generation=generation, control=control, public=public,
                          generations=generations or {})
        server, address = await serve(config, worker=role)
    except BaseException:
        await control.close()
        raise
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)  # (SIGINT is ignored: signer.__main__)
    assert server.admin is not None
    rs = server.admin.rotator.state.current
    control.notify("ready", pid=os.getpid(), generation=rs.generation, responders=responders(rs),
                   address=address)
    closed = loop.create_task(control.closed.wait())
    stop = loop.create_task(stopping.wait())
    await asyncio.wait([closed, stop], return_when=asyncio.FIRST_COMPLETED)
    if not stopping.is_set():
        log.warning("the supervisor is gone: stopping")
    closed.cancel()
    stop.cancel()
    await server.stop(SHUTDOWN_GRACE)
    await control.close()
    log.info("stopped")
