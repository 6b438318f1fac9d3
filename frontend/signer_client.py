"""grpc.aio client of the signer: typed statuses in, a DER OCSPResponse out, gRPC codes -> OCSPError.

- One channel per configured address (a list gives failover and spreads calls over signer
  processes: one channel is one HTTP/2 connection, which reaches one process). Each channel uses a
  local subchannel pool so two channels to the same address stay two connections.
- ``wait_for_ready=False``: while a signer is down its channel is in TRANSIENT_FAILURE and calls
  fail at once with UNAVAILABLE (-> tryLater, or the next address) instead of waiting out the deadline.
- Short reconnect backoff (at most ~1 s), so a signer that comes back is used again within a
  second or two, without restarting the frontend.
- Channels are made in one function, ``make_channel``: mTLS when configured (frontend.tls).
"""

from __future__ import annotations

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
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc

log = logging.getLogger("frontend.signer_client")

_HASHES = {HashAlgorithm.SHA1: pb.SHA1, HashAlgorithm.SHA256: pb.SHA256,
           HashAlgorithm.SHA384: pb.SHA384, HashAlgorithm.SHA512: pb.SHA512}
_STATUSES = {CertStatus.GOOD: pb.GOOD, CertStatus.REVOKED: pb.REVOKED, CertStatus.UNKNOWN: pb.UNKNOWN}

# INVALID_ARGUMENT is the signer's policy refusing what we asked (e.g. a thisUpdate ahead of its
# clock): not the client's fault and not a bug, but a state an operator fixes, so tryLater (logged).
TRY_LATER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.INVALID_ARGUMENT})
POLICY_LOG_INTERVAL = 10.0  # seconds between two log lines about policy refusals
# Codes after which another signer may well succeed.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


@dataclass(frozen=True, slots=True)
class SignResult:
    der: bytes
    generation: int
    responder_fingerprint: str
    signer: str = ""  # the address that signed (generations are counted per signer process)


def make_channel(address: str, tls: SignerTls | None = None) -> aio.Channel:
    """The one place channels are created: mTLS with ``tls`` (frontend.tls), else plaintext."""
    if tls is None:
        return aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return aio.secure_channel(address, tls.credentials(), options=[*CHANNEL_OPTIONS, *tls.options()])


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
    def __init__(self, addresses: Sequence[str], timeout: float, tls: SignerTls | None = None) -> None:
        if not addresses:
            raise ValueError("at least one signer address")
        self.addresses = tuple(addresses)
        self.timeout = timeout
        self.tls = tls
        self._channels: list[aio.Channel] = []
        self._stubs: list[signer_pb2_grpc.SignerStub] = []
        self._next = itertools.count()
        self._ids = itertools.count(1)
        self._prefix = f"fe{os.getpid()}-"
        self._last_policy_log = -1e9

    def _ensure(self) -> None:
        # Channels belong to the running event loop, so they are made on first use.
        if not self._channels:
            for a in self.addresses:
                ch = make_channel(a, self.tls)
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
            stub = self._stubs[(start + i) % n]
            try:
                reply = await stub.Sign(request, timeout=self.timeout, wait_for_ready=False)
            except grpc.RpcError as e:
                last = map_error(e)
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._log_policy_refusal(last)
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

    def _log_policy_refusal(self, error: OCSPError) -> None:
        now = time.monotonic()
        if now - self._last_policy_log >= POLICY_LOG_INTERVAL:
            self._last_policy_log = now
            log.error("the signer's policy refused to sign (answering tryLater): %s", error)

    async def health(self) -> bool:
        self._ensure()
        for stub in self._stubs:
            try:
                reply = await stub.Health(pb.HealthRequest(), timeout=self.timeout, wait_for_ready=False)
                if reply.serving:
                    return True
            except grpc.RpcError:
                continue
        return False

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
