"""grpc.aio client of the signer: typed statuses in, a DER OCSPResponse out, gRPC codes -> OCSPError.

- ``connections`` channels per configured address, its lanes (a list of addresses gives failover and
  spreads calls over signer hosts or processes). One channel is one HTTP/2 connection, which reaches
  one signer process: a signer running several workers behind one listen address (SO_REUSEPORT) is
  balanced by the kernel per connection, not per call, so one connection would keep every call on one
  worker. Each channel uses a local subchannel pool and carries its lane number as a channel argument
  (``LANE_ARG``), so no two of them share a connection.
- ``wait_for_ready=False``: while a signer is down its channel is in TRANSIENT_FAILURE and calls
  fail at once with UNAVAILABLE (-> tryLater, or the next address) instead of waiting out the deadline.
- Short reconnect backoff (at most ~1 s), so a signer that comes back is used again within a
  second or two, without restarting the frontend.
- Channels are made in one function, ``make_channel``: mTLS when configured (frontend.tls).
- Keepalive (``channel_options``): an HTTP/2 ping every ``keepalive`` seconds on every connection, with
  or without calls in flight and however long nothing else was sent, so a connection that died quietly
  is replaced before a Sign meets it. This is one half of an agreement: the signer accepts pings that
  often (its ``listen.min_ping_interval``, signer.service.server_options) and drops a client pinging
  faster with GOAWAY "too_many_pings".
- A Sign whose connection went away under it (UNAVAILABLE without the signer's refusal mark,
  shared.rpc.metadata: GOAWAY, reset, keepalive timeout) is sent once more, on the same address over
  a new connection, within what is left of its deadline; then failover or tryLater as for any other
  UNAVAILABLE. A call the signer refused is never retried on the same address. Signing twice is
  harmless: the signer logs every signature it makes.
- Batching: concurrent ``sign()`` calls queue their request. While fewer SignBatch calls are in flight
  than there are lanes (``connections`` per address, ``calls_per_address`` each), one goes out at once
  with what is queued (no added delay on an idle line); what queues while calls are in flight joins the
  next one, up to ``max_batch`` requests. The address is taken in turn (then failover); at that address
  the call goes on the lane with the fewest calls in flight (ties in turn), so with N connections up to
  N batches are in flight per address at once. With several lanes all connect at once, and a connected
  lane below its bound goes before one that is not connected (``_lane``), so after a signer restart or
  a lost connection one lane that is back is enough. Each caller gets its own item's outcome, mapped as a
  unary Sign's error would be (the signer's items carry the code and message Sign would have returned);
  an item that failed with a failover code goes to the next address on its own; the lost-connection
  retry applies to the whole call, on the same lane. A signer that answers UNIMPLEMENTED for SignBatch
  (older than it) gets unary Signs from then on (logged once); one that refuses a batch as too long (its
  ``[policy] max_batch``, in trailing metadata) gets shorter ones. ``timeout`` stays per request: a
  call's deadline is the earliest of its requests', counted from each ``sign()``.
- Health and the Watch stream (frontend.watch) use each address's first lane (``channels()``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from frontend.request_ids import RequestIds
from frontend.tls import SignerTls
from shared.metrics import Buckets
from shared.ocsp.errors import InternalError, OCSPError, StatusDisagrees, TryLater, Unauthorized
from shared.ocsp.types import CertStatus, HashAlgorithm, SingleStatus
from shared.ratelog import RateLimitedLog
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from shared.rpc.metadata import MAX_BATCH, REFUSED, STATUS_DISAGREES

log = logging.getLogger("frontend.signer_client")

_HASHES = {HashAlgorithm.SHA1: pb.SHA1, HashAlgorithm.SHA256: pb.SHA256,
           HashAlgorithm.SHA384: pb.SHA384, HashAlgorithm.SHA512: pb.SHA512}
_STATUSES = {CertStatus.GOOD: pb.GOOD, CertStatus.REVOKED: pb.REVOKED, CertStatus.UNKNOWN: pb.UNKNOWN}

# INVALID_ARGUMENT is the signer's policy refusing what we asked (e.g. a thisUpdate ahead of its
# clock): not the client's fault and not a bug, but a state an operator fixes, so tryLater (logged).
TRY_LATER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.INVALID_ARGUMENT, STATUS_DISAGREES})
POLICY_LOG_INTERVAL = 10.0  # seconds between two log lines about policy refusals
# Codes after which another signer may well succeed.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# The signer's default listen.min_ping_interval (signer.config.DEFAULT_MIN_PING_INTERVAL; a test keeps
# the two equal): a keepalive below it needs that signer setting lowered too.
SIGNER_DEFAULT_MIN_PING_INTERVAL = 10.0
RETRY_MIN_SECONDS = 0.05  # a retry needs at least this much of the deadline left
RETRY_LOG_INTERVAL = 10.0  # seconds between two log lines about retried Signs
# Requests in one SignBatch at most: the signer's default [policy] max_batch (signer.config.DEFAULT_MAX_BATCH;
# a test keeps the two equal). A signer with a lower bound says so, and gets shorter batches.
DEFAULT_MAX_BATCH = 64
_CODES = {c.value[0]: c for c in grpc.StatusCode}
CALLS_PER_ADDRESS = 1  # SignBatch calls in flight at once per lane (connection)
# A channel argument gRPC core ignores, set to the lane's number: channels to one address never have
# the same arguments, so even the global subchannel pool could not give two of them one connection.
LANE_ARG = "ocsp.frontend.lane"


@dataclass(frozen=True, slots=True)
class Keepalive:
    interval: float = 30.0  # seconds between pings ([signer] keepalive)
    timeout: float = 10.0  # an unanswered ping closes the connection ([signer] keepalive_timeout)


def channel_options(keepalive: Keepalive = Keepalive()) -> list[tuple[str, int]]:
    return [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", int(keepalive.interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout * 1000)),
        # Any unanswered ping, not only a keepalive one: while another ping (gRPC's own bandwidth probe)
        # awaits its answer no keepalive ping is sent, and that one would otherwise wait a minute.
        # (Named in gRPC core's internal header, not its public one; test_signer_channel notices if
        # an upgrade drops it.)
        ("grpc.http2.ping_timeout_ms", int(keepalive.timeout * 1000)),
        # Ping a connection with no call in flight too (the signer permits it), and keep pinging one
        # on which only the idle Watch stream is open (gRPC stops after 2 pings without data otherwise).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ]


CHANNEL_OPTIONS = channel_options()


def keepalive_warning(interval: float) -> str | None:
    """The start-up warning for a keepalive the signer's default ping policy would punish, else None."""
    if interval >= SIGNER_DEFAULT_MIN_PING_INTERVAL:
        return None
    return (f"signer.keepalive ({interval:g}s) is shorter than the signer's default listen.min_ping_interval "
            f"({SIGNER_DEFAULT_MIN_PING_INTERVAL:g}s): set min_ping_interval in signer.toml to at most "
            f"{interval:g}s, or the signer drops this frontend's connections (GOAWAY too_many_pings)")


@dataclass(frozen=True, slots=True)
class SignResult:
    der: bytes
    generation: int
    responder_fingerprint: str
    signer: str = ""  # the address that signed (generations are counted per signer process)
    request_id: str = ""  # the SignRequest's request_id: the signer's audit record of it carries the same


@dataclass(frozen=True, slots=True)
class SignerHealth:
    """One signer's answer to Health (``serving`` False with the reason when it did not answer)."""

    address: str
    serving: bool
    detail: str


def make_channel(address: str, tls: SignerTls | None = None, keepalive: Keepalive = Keepalive(), *,
                 lane: int = 0) -> aio.Channel:
    """The one place channels are created: mTLS with ``tls`` (frontend.tls), else plaintext; ``lane``:
    which of the address's connections this is (``LANE_ARG``)."""
    options = [*channel_options(keepalive), (LANE_ARG, lane)]
    if tls is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, tls.credentials(), options=[*options, *tls.options()])


def to_proto(statuses: Sequence[SingleStatus], request_id: str, nonce: bytes | None) -> pb.SignRequest:
    items = []
    for s in statuses:
        cid = s.cert_id
        item = pb.SingleStatus(
            cert_id=pb.CertId(hash_algorithm=_HASHES[cid.hash_algorithm],
                              issuer_name_hash=cid.issuer_name_hash,
                              issuer_key_hash=cid.issuer_key_hash, serial_number=cid.serial),
            status=_STATUSES[s.status],
            this_update=int(s.this_update.timestamp()),
            next_update=int(s.next_update.timestamp()),
        )
        if s.status is CertStatus.REVOKED and s.revocation is not None:
            rev = s.revocation
            item.revocation_time = int(rev.time.timestamp())
            if rev.reason is not None:
                item.revocation_reason = int(rev.reason)
            if rev.invalidity_date is not None:
                item.invalidity_date = int(rev.invalidity_date.timestamp())
        items.append(item)
    req = pb.SignRequest(request_id=request_id, responses=items)
    if nonce is not None:
        req.nonce = nonce
    return req


def describe(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    detail = e.details() if hasattr(e, "details") else str(e)
    return f"{code.name if code else 'error'}: {detail}"


def refused_by_signer(e: grpc.RpcError) -> bool:
    """The signer's own code returned this status (it carries the mark), as opposed to gRPC reporting
    a connection that went away under the call."""
    metadata = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    return any(key == REFUSED for key, _ in metadata or ())


def map_error(e: grpc.RpcError) -> OCSPError:
    code = e.code() if hasattr(e, "code") else None
    detail = e.details() if hasattr(e, "details") else str(e)
    msg = f"signer: {code.name if code else 'error'}: {detail}"
    if code == STATUS_DISAGREES:
        return StatusDisagrees(msg)
    if code in TRY_LATER_CODES:
        return TryLater(msg)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return Unauthorized(msg)
    return InternalError(msg)


class ItemError(grpc.RpcError):
    """One request of a batch that failed, shaped like the error a unary Sign raises for it (``code()``,
    ``details()``, ``trailing_metadata()`` with the refusal mark when the signer refused it), so the
    same mapping and rules apply."""

    def __init__(self, code: grpc.StatusCode, details: str, refused: bool) -> None:
        super().__init__(details)
        self._code, self._details, self._refused = code, details, refused

    @classmethod
    def of(cls, error: pb.SignError) -> ItemError:
        return cls(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.message, error.refused)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REFUSED, self._code.name),) if self._refused else ()


@dataclass(slots=True, eq=False)
class _Job:
    """A queued ``sign()``: its request, its deadline (time.monotonic), where its outcome goes."""

    request: pb.SignRequest
    deadline: float
    future: asyncio.Future[SignResult]


Outcome = pb.SignReply | grpc.RpcError


@dataclass(slots=True, eq=False)
class _Lane:
    """One connection to an address: its channel and stub, and the calls in flight on it."""

    k: int  # the address's index
    channel: aio.Channel
    stub: signer_pb2_grpc.SignerStub
    in_flight: int = 0


class SignerClient:
    def __init__(self, addresses: Sequence[str], timeout: float, tls: SignerTls | None = None,
                 keepalive: Keepalive = Keepalive(), max_batch: int = DEFAULT_MAX_BATCH,
                 calls_per_address: int = CALLS_PER_ADDRESS, connections: int = 1,
                 ids: RequestIds | None = None) -> None:
        """``connections``: channels (lanes) per address; the frontend passes ``[signer] connections``
        (frontend.config.DEFAULT_CONNECTIONS when not given), 1 here is one connection per address.
        ``ids``: the process's request ids (frontend.request_ids; a new prefix when not given)."""
        if not addresses:
            raise ValueError("at least one signer address")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.addresses = tuple(addresses)
        self.timeout = timeout
        self.tls = tls
        self.keepalive = keepalive
        self.retries = 0  # Signs sent again after their connection went away
        self._ratelog = RateLimitedLog(log, RETRY_LOG_INTERVAL, time.monotonic)
        self.connections = connections
        self._lanes: list[list[_Lane]] = []  # per address, its connections
        self._turns = [itertools.count() for _ in self.addresses]  # per address: which lane wins a tie
        self._next = itertools.count()
        self.ids = ids if ids is not None else RequestIds()  # every SignRequest's request_id
        self._policy_log = RateLimitedLog(log, POLICY_LOG_INTERVAL, time.monotonic)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.calls_per_address = calls_per_address  # SignBatch calls in flight at once, per lane
        self.batch_calls = 0  # SignBatch calls sent (each carries one or more requests)
        # Metrics (frontend.metrics reads them at scrape time): each Sign / SignBatch call's time, and
        # the requests that failed, by gRPC status code name.
        self.call_seconds = Buckets()
        self.errors: dict[str, int] = {}
        self._queue: deque[_Job] = deque()
        self._batches: set[asyncio.Task[None]] = set()  # SignBatch calls in flight, with their failover
        self._unary_only: set[int] = set()  # addresses whose signer has no SignBatch (UNIMPLEMENTED)

    def _ensure(self) -> None:
        # Channels belong to the running event loop, so they are made on first use.
        if not self._lanes:
            for k, a in enumerate(self.addresses):
                channels = [make_channel(a, self.tls, self.keepalive, lane=j) for j in range(self.connections)]
                self._lanes.append([_Lane(k, ch, signer_pb2_grpc.SignerStub(ch)) for ch in channels])
            if self.connections > 1:  # every lane connects now, as the first one does for Watch and Health
                for lanes in self._lanes:
                    for lane in lanes:
                        lane.channel.get_state(try_to_connect=True)

    def channels(self) -> list[tuple[str, aio.Channel]]:
        """(address, channel) pairs, each address's first lane, made on first use; frontend.watch
        streams over the same ones."""
        self._ensure()
        return [(a, lanes[0].channel) for a, lanes in zip(self.addresses, self._lanes)]

    def in_flight(self) -> list[list[int]]:
        """Calls in flight on each lane, per address."""
        return [[lane.in_flight for lane in lanes] for lanes in self._lanes]

    def _lane(self, k: int) -> _Lane:
        """Address ``k``'s lane with the fewest calls in flight; of equals, each in turn. Of the lanes
        below ``calls_per_address``, a connected one goes before one that is not (still connecting, or
        failing to: the signer restarting, that connection lost), which is asked to connect: while one
        lane works, a call does not meet the failure another is in (tryLater where one lane had worked)."""
        lanes = self._lanes[k]
        if len(lanes) == 1:
            return lanes[0]
        turn = next(self._turns[k])
        return min((lanes[(turn + j) % len(lanes)] for j in range(len(lanes))),
                   key=lambda lane: (lane.in_flight >= self.calls_per_address, not _connected(lane.channel),
                                     lane.in_flight))

    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult:
        """Have the signer sign ``statuses``; raises TryLater / Unauthorized / InternalError."""
        self._ensure()
        request = to_proto(statuses, self.ids.next(), nonce)
        job = _Job(request, time.monotonic() + self.timeout, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._dispatch()
        try:
            return await job.future
        except OCSPError as e:
            # This request's own copy (one error may be every request's of a batch), naming its SignRequest.
            failed = type(e)(*e.args)
            failed.request_id = request.request_id
            raise failed from e

    def _dispatch(self) -> None:
        """Send what is queued while fewer calls than lanes are in flight (each call takes up to
        ``max_batch`` requests)."""
        loop = asyncio.get_running_loop()
        lanes = len(self._lanes) * self.connections * self.calls_per_address
        while self._queue and len(self._batches) < lanes:
            jobs: list[_Job] = []
            while self._queue and len(jobs) < self.max_batch:
                job = self._queue.popleft()
                if not job.future.done():  # a caller that gave up is not sent
                    jobs.append(job)
            if not jobs:
                return
            task = loop.create_task(self._run(jobs))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if self._lanes:
            self._dispatch()

    async def _run(self, jobs: list[_Job]) -> None:
        try:
            await self._send(jobs)
        except asyncio.CancelledError:
            _settle(jobs, TryLater("signer: the signer client is closing"))
            raise
        except Exception as e:  # a bug here must not leave callers waiting
            log.exception("signing batch failed")
            _settle(jobs, InternalError(f"signer client: {e!r}"))
        _settle(jobs, InternalError("signer client: no outcome for a request"))  # never: every job is settled

    async def _send(self, jobs: list[_Job]) -> None:
        """One batch, with failover: the requests that failed with a failover code go on to the next
        address (only the first address gets the lost-connection retry: once per request). At each
        address the call goes on its least busy lane."""
        n = len(self._lanes)
        start = next(self._next)
        pending = jobs
        for i in range(n):
            k = (start + i) % n
            now = time.monotonic()
            for job in pending:
                if job.deadline <= now and not job.future.done():
                    job.future.set_exception(TryLater("signer: DEADLINE_EXCEEDED: signer.timeout passed before "
                                                      "the request could be sent"))
            pending = [job for job in pending if not job.future.done()]
            if not pending:
                return
            lane = self._lane(k)  # chosen and counted before the first await: the next batch sees it
            lane.in_flight += 1
            try:
                outcomes = await self._batch_at(lane, [job.request for job in pending],
                                                min(job.deadline for job in pending), may_retry=i == 0)
            finally:
                lane.in_flight -= 1
            again: list[_Job] = []
            for job, outcome in zip(pending, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, pb.SignReply):
                    if not outcome.ocsp_response:
                        job.future.set_exception(InternalError("signer returned an empty response"))
                    else:
                        job.future.set_result(SignResult(bytes(outcome.ocsp_response), outcome.generation,
                                                         outcome.responder_fingerprint, self.addresses[k],
                                                         job.request.request_id))
                    continue
                error = self._note_error(outcome, k)
                if _code(outcome) in FAILOVER_CODES and i + 1 < n:
                    again.append(job)
                else:
                    job.future.set_exception(error)
            pending = again
            if not pending:
                return

    async def _batch_at(self, lane: _Lane, requests: list[pb.SignRequest], deadline: float, *,
                        may_retry: bool) -> list[Outcome]:
        """The outcome of each request on ``lane``: one SignBatch call, or unary Signs to a signer
        without SignBatch. An error of the whole call is every request's outcome."""
        k = lane.k
        if k not in self._unary_only:
            stub = lane.stub
            batch = pb.SignBatchRequest(requests=requests)
            self.batch_calls += 1
            try:
                reply = await self._call(lane, lambda timeout: stub.SignBatch(batch, timeout=timeout,
                                                                           wait_for_ready=False),
                                         deadline, may_retry=may_retry)
            except grpc.RpcError as e:
                code = _code(e)
                bound = _max_batch(e)
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    if k not in self._unary_only:  # told once, though several lanes may learn it at once
                        self._unary_only.add(k)
                        log.warning("signer at %s has no SignBatch (%s; an older signer): sending it one Sign "
                                    "per request from now on", self.addresses[k], describe(e))
                elif bound is not None and 1 <= bound < len(requests):
                    if bound < self.max_batch:
                        log.warning("signer at %s takes at most %d requests per SignBatch ([policy] max_batch): "
                                    "sending batches of %d", self.addresses[k], bound, bound)
                        self.max_batch = bound
                    parts = await asyncio.gather(*(
                        self._batch_at(lane, requests[j:j + bound], deadline, may_retry=may_retry)
                        for j in range(0, len(requests), bound)))
                    return [outcome for part in parts for outcome in part]
                else:
                    return [e] * len(requests)
            else:
                if len(reply.items) != len(requests):
                    e = ItemError(grpc.StatusCode.INTERNAL, f"the signer answered {len(reply.items)} items for "
                                  f"{len(requests)} requests", refused=True)
                    return [e] * len(requests)
                return [item.reply if item.WhichOneof("result") == "reply" else ItemError.of(item.error)
                        for item in reply.items]
        outcomes = await asyncio.gather(*(self._sign_at(lane, r, deadline, may_retry=may_retry)
                                          for r in requests), return_exceptions=True)
        for outcome in outcomes:
            if not isinstance(outcome, (pb.SignReply, grpc.RpcError)):
                raise outcome
        return outcomes  # type: ignore[return-value]

    async def _sign_at(self, lane: _Lane, request: pb.SignRequest, deadline: float, *,
                       may_retry: bool) -> pb.SignReply:
        stub = lane.stub
        return await self._call(lane, lambda timeout: stub.Sign(request, timeout=timeout, wait_for_ready=False),
                                deadline, may_retry=may_retry)

    async def _call(self, lane: _Lane, call: Callable[[float], Awaitable[Any]], deadline: float, *,
                    may_retry: bool) -> Any:
        """``call(timeout)`` on ``lane`` within ``deadline``; when the connection went away under it,
        once more over a new one (the same lane's channel reconnects)."""
        started = time.perf_counter()
        try:
            return await call(max(deadline - time.monotonic(), 0.0))
        except grpc.RpcError as e:
            left = deadline - time.monotonic()
            if not (may_retry and left >= RETRY_MIN_SECONDS and self._connection_lost(lane, e)):
                raise
            self.retries += 1
            self._ratelog.log(logging.WARNING, "retry", "signer at %s: the connection went away during a Sign "
                              "(%s); sending it again over a new connection", self.addresses[lane.k], describe(e))
        finally:
            self.call_seconds.observe(time.perf_counter() - started)
        # gRPC replaces the lost connection: the channel reconnects for this call (and fails it at
        # once if the signer cannot be reached, leaving the rest to failover / tryLater).
        started = time.perf_counter()
        try:
            return await call(left)
        finally:
            self.call_seconds.observe(time.perf_counter() - started)

    def _note_error(self, e: grpc.RpcError, k: int) -> OCSPError:
        """The OCSPError for a failed request, with the operator told about policy and status refusals."""
        error = map_error(e)
        code = _code(e)
        name = code.name if code is not None else "UNKNOWN"
        self.errors[name] = self.errors.get(name, 0) + 1
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._log_policy_refusal(error)
        elif code == STATUS_DISAGREES:
            self._policy_log.log(logging.ERROR, "status", "the signer's status data disagrees with ours "
                                 "(answering tryLater; a reload in progress on one side?): %s", error)
        log.debug("%s (address %s)", error, self.addresses[k])
        return error

    def _connection_lost(self, lane: _Lane, e: grpc.RpcError) -> bool:
        code = e.code() if hasattr(e, "code") else None
        if code != grpc.StatusCode.UNAVAILABLE or refused_by_signer(e):
            return False
        # A channel that could not connect at all has nothing to replace: that is a signer that is down.
        state = lane.channel.get_state(try_to_connect=False)
        return state != grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _log_policy_refusal(self, error: OCSPError) -> None:
        self._policy_log.log(logging.ERROR, "policy", "the signer's policy refused to sign (answering tryLater): %s",
                             error)

    async def health(self, timeout: float | None = None) -> list[SignerHealth]:
        """Every signer's Health, asked at once (frontend.readiness polls this)."""
        self._ensure()
        return list(await asyncio.gather(*(self._health_at(k, timeout or self.timeout)
                                           for k in range(len(self._lanes)))))

    async def _health_at(self, k: int, timeout: float) -> SignerHealth:
        try:
            reply = await self._lanes[k][0].stub.Health(pb.HealthRequest(), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            return SignerHealth(self.addresses[k], False, describe(e))
        return SignerHealth(self.addresses[k], reply.serving, reply.detail)

    async def close(self) -> None:
        _settle(list(self._queue), TryLater("signer: the signer client is closing"))
        self._queue.clear()
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        lanes = [lane for per_address in self._lanes for lane in per_address]
        self._lanes.clear()
        for lane in lanes:
            await lane.channel.close()


def _connected(channel: aio.Channel) -> bool:
    """Whether ``channel`` has a connection up; one that has not is asked to make one."""
    return channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY


def _code(e: grpc.RpcError) -> grpc.StatusCode | None:
    return e.code() if hasattr(e, "code") else None


def _max_batch(e: grpc.RpcError) -> int | None:
    """The signer's bound on a batch it refused as too long (trailing metadata MAX_BATCH), else None."""
    if _code(e) != grpc.StatusCode.RESOURCE_EXHAUSTED or not refused_by_signer(e):
        return None
    metadata = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == MAX_BATCH:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def _settle(jobs: Sequence[_Job], error: OCSPError) -> None:
    """``error`` for every job still waiting."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
