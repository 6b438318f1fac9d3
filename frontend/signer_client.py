"""grpc.aio client of the signer: typed statuses in, a DER OCSPResponse out, gRPC codes -> OCSPError.

- One channel per configured address (a list gives failover and spreads calls over signer
  processes: one channel is one HTTP/2 connection, which reaches one process). Each channel uses a
  local subchannel pool so two channels to the same address stay two connections.
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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc import aio

from frontend.tls import SignerTls
from shared.ocsp.errors import InternalError, OCSPError, TryLater, Unauthorized
from shared.ocsp.types import CertStatus, HashAlgorithm, SingleStatus
from shared.ratelog import RateLimitedLog
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from shared.rpc.metadata import REFUSED, STATUS_DISAGREES

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


@dataclass(frozen=True, slots=True)
class SignerHealth:
    """One signer's answer to Health (``serving`` False with the reason when it did not answer)."""

    address: str
    serving: bool
    detail: str


def make_channel(address: str, tls: SignerTls | None = None, keepalive: Keepalive = Keepalive()) -> aio.Channel:
    """The one place channels are created: mTLS with ``tls`` (frontend.tls), else plaintext."""
    options = channel_options(keepalive)
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
    if code in TRY_LATER_CODES:
        return TryLater(msg)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return Unauthorized(msg)
    return InternalError(msg)


class SignerClient:
    def __init__(self, addresses: Sequence[str], timeout: float, tls: SignerTls | None = None,
                 keepalive: Keepalive = Keepalive()) -> None:
        if not addresses:
            raise ValueError("at least one signer address")
        self.addresses = tuple(addresses)
        self.timeout = timeout
        self.tls = tls
        self.keepalive = keepalive
        self.retries = 0  # Signs sent again after their connection went away
        self._ratelog = RateLimitedLog(log, RETRY_LOG_INTERVAL, time.monotonic)
        self._channels: list[aio.Channel] = []
        self._stubs: list[signer_pb2_grpc.SignerStub] = []
        self._next = itertools.count()
        self._ids = itertools.count(1)
        self._prefix = f"fe{os.getpid()}-"
        self._policy_log = RateLimitedLog(log, POLICY_LOG_INTERVAL, time.monotonic)

    def _ensure(self) -> None:
        # Channels belong to the running event loop, so they are made on first use.
        if not self._channels:
            for a in self.addresses:
                ch = make_channel(a, self.tls, self.keepalive)
                self._channels.append(ch)
                self._stubs.append(signer_pb2_grpc.SignerStub(ch))

    def channels(self) -> list[tuple[str, aio.Channel]]:
        """(address, channel) pairs, made on first use; frontend.watch streams over the same ones."""
        self._ensure()
        return list(zip(self.addresses, self._channels))

    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult:
        """Have the signer sign ``statuses``; raises TryLater / Unauthorized / InternalError."""
        self._ensure()
        request = to_proto(statuses, self._prefix + str(next(self._ids)), nonce)
        n = len(self._stubs)
        start = next(self._next)
        last: OCSPError | None = None
        for i in range(n):
            try:
                # Only the first address gets the retry: once per request.
                reply = await self._sign_at((start + i) % n, request, may_retry=i == 0)
            except grpc.RpcError as e:
                last = map_error(e)
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._log_policy_refusal(last)
                elif code == STATUS_DISAGREES:
                    self._policy_log.log(logging.ERROR, "status", "the signer's status data disagrees with ours "
                                         "(answering tryLater; a reload in progress on one side?): %s", last)
                log.debug("%s (address %s)", last, self.addresses[(start + i) % n])
                if code in FAILOVER_CODES and i + 1 < n:
                    continue
                raise last from None
            if not reply.ocsp_response:
                raise InternalError("signer returned an empty response")
            return SignResult(bytes(reply.ocsp_response), reply.generation, reply.responder_fingerprint,
                              self.addresses[(start + i) % n])
        assert last is not None
        raise last

    async def _sign_at(self, k: int, request: pb.SignRequest, *, may_retry: bool) -> pb.SignReply:
        """Sign at address ``k``; when the connection went away under the call, once more over a new one."""
        stub = self._stubs[k]
        deadline = time.monotonic() + self.timeout
        try:
            return await stub.Sign(request, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            left = deadline - time.monotonic()
            if not (may_retry and left >= RETRY_MIN_SECONDS and self._connection_lost(k, e)):
                raise
            self.retries += 1
            self._ratelog.log(logging.WARNING, "retry", "signer at %s: the connection went away during a Sign "
                              "(%s); sending it again over a new connection", self.addresses[k], describe(e))
        # gRPC replaces the lost connection: the channel reconnects for this call (and fails it at
        # once if the signer cannot be reached, leaving the rest to failover / tryLater).
        return await stub.Sign(request, timeout=left, wait_for_ready=False)

    def _connection_lost(self, k: int, e: grpc.RpcError) -> bool:
        code = e.code() if hasattr(e, "code") else None
        if code != grpc.StatusCode.UNAVAILABLE or refused_by_signer(e):
            return False
        # A channel that could not connect at all has nothing to replace: that is a signer that is down.
        state = self._channels[k].get_state(try_to_connect=False)
        return state != grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _log_policy_refusal(self, error: OCSPError) -> None:
        self._policy_log.log(logging.ERROR, "policy", "the signer's policy refused to sign (answering tryLater): %s",
                             error)

    async def health(self, timeout: float | None = None) -> list[SignerHealth]:
        """Every signer's Health, asked at once (frontend.readiness polls this)."""
        self._ensure()
        return list(await asyncio.gather(*(self._health_at(k, timeout or self.timeout)
                                           for k in range(len(self._stubs)))))

    async def _health_at(self, k: int, timeout: float) -> SignerHealth:
        try:
            reply = await self._stubs[k].Health(pb.HealthRequest(), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            return SignerHealth(self.addresses[k], False, describe(e))
        return SignerHealth(self.addresses[k], reply.serving, reply.detail)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
