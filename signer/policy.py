"""The signer's own policy over a SignRequest: typed fields in, typed values out, or PolicyError.

The frontend is trusted to resolve statuses, not to decide what the signer signs: every field is
checked here against the signer's configuration and clock before anything is built or signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from shared.clock import Clock
from shared.ocsp.certid import MAX_SERIAL_VALUE_OCTETS, serial_problem
from shared.ocsp.errors import OCSPError
from shared.ocsp.request import nonce_length
from shared.ocsp.types import (
    DIGEST_SIZES,
    CertId,
    CertStatus,
    HashAlgorithm,
    IssuerKey,
    Revocation,
    RevocationReason,
    SingleStatus,
)
from shared.rpc import signer_pb2 as pb
from signer.config import PolicyConfig
from signer.responders import Responder, ResponderSet

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Latest time GeneralizedTime in our encoding (and datetime) can carry: 9999-12-31T23:59:59Z.
MAX_TIME = 253402300799
MIN_NONCE, MAX_NONCE = 1, 128  # RFC 9654
MAX_REQUEST_ID = 256

_HASHES = {pb.SHA1: HashAlgorithm.SHA1, pb.SHA256: HashAlgorithm.SHA256, pb.SHA384: HashAlgorithm.SHA384,
           pb.SHA512: HashAlgorithm.SHA512}
_STATUSES = {pb.GOOD: CertStatus.GOOD, pb.REVOKED: CertStatus.REVOKED, pb.UNKNOWN: CertStatus.UNKNOWN}
_REASONS = {r.value: r for r in RevocationReason}


class PolicyError(Exception):
    """A request the signer will not sign; ``code`` is the gRPC status the caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> PolicyError:
    return PolicyError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True, slots=True, eq=False)
class SignJob:
    """A validated request: what to sign, with which responder."""

    request_id: str
    responder: Responder
    statuses: tuple[SingleStatus, ...]
    nonce: bytes | None  # the nonce extension's extnValue, byte-exact


class Policy:
    def __init__(self, config: PolicyConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock

    def check(self, request: pb.SignRequest, responders: ResponderSet) -> SignJob:
        """Validate ``request``; raise PolicyError with the first fault found."""
        now = self.clock.now()
        skew = self.config.max_clock_skew
        check_known_fields(request)
        if len(request.request_id) > MAX_REQUEST_ID:
            raise _invalid(f"request_id is longer than {MAX_REQUEST_ID} characters")
        n = len(request.responses)
        if not 1 <= n <= self.config.max_cert_ids:
            raise _invalid(f"responses: {n} entries; 1..{self.config.max_cert_ids} allowed")
        nonce = self._nonce(request)

        responder: Responder | None = None
        statuses: list[SingleStatus] = []
        for i, item in enumerate(request.responses):
            where = f"responses[{i}]"
            cert_id = _cert_id(where, item)
            found = responders.get(IssuerKey.of(cert_id))
            if found is None:
                raise PolicyError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{where}.cert_id: this signer is not configured for that issuer")
            if responder is None:
                responder = found
            elif found is not responder:
                raise PolicyError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{where}.cert_id: issuer {found.name!r} differs from {responder.name!r}; "
                                  "one request, one responder")
            st = self._status(where, item, cert_id, now, skew)
            if statuses or st.revocation is not None:
                self._consistent(where, st, statuses, found)
            statuses.append(st)

        assert responder is not None
        if not responder.not_before <= now <= responder.not_after:
            raise PolicyError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"the responder certificate of {responder.name!r} is not valid now "
                              f"(valid {responder.not_before:%Y-%m-%dT%H:%M:%SZ} to "
                              f"{responder.not_after:%Y-%m-%dT%H:%M:%SZ})")
        return SignJob(request.request_id, responder, tuple(statuses), nonce)

    # -- pieces ------------------------------------------------------------------
    @staticmethod
    def _nonce(request: pb.SignRequest) -> bytes | None:
        if not request.HasField("nonce"):
            return None
        nonce = bytes(request.nonce)
        try:
            length = nonce_length(nonce)
        except (OCSPError, ValueError) as e:
            raise _invalid(f"nonce: {e or 'not a valid nonce extension value'}") from None
        if not MIN_NONCE <= length <= MAX_NONCE:
            raise _invalid(f"nonce: {length} octets; {MIN_NONCE}..{MAX_NONCE} allowed (RFC 9654)")
        return nonce

    @staticmethod
    def _consistent(where: str, st: SingleStatus, before: list[SingleStatus], responder: Responder) -> None:
        """What no honest frontend sends: one certificate (the same CertID twice, or one serial under two
        hash algorithms) with two different answers, a revocation older than the CA certificate, an
        invalidity date after the revocation. The same CertID twice with the same answer is signed: a
        client may ask twice, and RFC 6960 4.2.2 wants a SingleResponse for each certificate asked."""
        for other in before:
            if other.cert_id.serial == st.cert_id.serial and (
                    other.status, other.revocation, other.this_update, other.next_update) != (
                    st.status, st.revocation, st.this_update, st.next_update):
                what = "CertID" if other.cert_id == st.cert_id else f"serial {st.cert_id.serial.hex()}"
                raise _invalid(f"{where}: the same {what} twice, with two different answers")
        r = st.revocation
        if r is None:
            return
        if r.time != EPOCH and r.time < responder.ca_not_before:
            raise _invalid(f"{where}.revocation_time: {r.time:%Y-%m-%dT%H:%M:%SZ} is before the CA certificate "
                           f"of {responder.name!r} was valid ({responder.ca_not_before:%Y-%m-%dT%H:%M:%SZ})")
        if r.invalidity_date is not None and r.invalidity_date > r.time:
            raise _invalid(f"{where}.invalidity_date: {r.invalidity_date:%Y-%m-%dT%H:%M:%SZ} is after the "
                           f"revocation time {r.time:%Y-%m-%dT%H:%M:%SZ}")

    def _status(self, where: str, item: pb.SingleStatus, cert_id: CertId, now: datetime,
                skew: timedelta) -> SingleStatus:
        status = _STATUSES.get(item.status)
        if status is None:
            raise _invalid(f"{where}.status: must be GOOD, REVOKED or UNKNOWN")

        this_update = _time(f"{where}.this_update", item.this_update)
        next_update = _time(f"{where}.next_update", item.next_update)
        latest = now + skew  # the latest time a status may state
        if this_update > latest:
            raise _invalid(f"{where}.this_update: {this_update:%Y-%m-%dT%H:%M:%SZ} is in the future")
        if next_update <= this_update:
            raise _invalid(f"{where}.next_update: must be after this_update")
        if next_update - this_update > self.config.max_validity:
            raise _invalid(f"{where}.next_update: validity {next_update - this_update} exceeds "
                           f"the signer's maximum {self.config.max_validity}")
        if next_update <= now:
            raise _invalid(f"{where}.next_update: {next_update:%Y-%m-%dT%H:%M:%SZ} has passed; "
                           "refusing to sign an expired answer")

        revocation = None
        if status is CertStatus.REVOKED:
            reason = None
            if item.HasField("revocation_reason"):
                reason = _REASONS.get(item.revocation_reason)
                if reason is None:
                    raise _invalid(f"{where}.revocation_reason: {item.revocation_reason} is not a CRLReason "
                                   "(0-6, 8-10)")
            if item.revocation_time < 0 or (item.revocation_time == 0
                                            and reason is not RevocationReason.CERTIFICATE_HOLD):
                # 0 is 1970-01-01, allowed only as RFC 6960 2.2 "extended revoked" (certificateHold).
                raise _invalid(f"{where}.revocation_time: required for REVOKED")
            revoked_at = _time(f"{where}.revocation_time", item.revocation_time, allow_zero=True)
            if revoked_at > latest:
                raise _invalid(f"{where}.revocation_time: {revoked_at:%Y-%m-%dT%H:%M:%SZ} is in the future")
            invalidity = None
            if item.invalidity_date != 0:
                invalidity = _time(f"{where}.invalidity_date", item.invalidity_date)
                if invalidity > latest:
                    raise _invalid(f"{where}.invalidity_date: {invalidity:%Y-%m-%dT%H:%M:%SZ} "
                                   "is in the future")
            revocation = Revocation(revoked_at, reason, invalidity)
        else:
            if item.revocation_time != 0:
                raise _invalid(f"{where}.revocation_time: only allowed for REVOKED")
            if item.invalidity_date != 0:
                raise _invalid(f"{where}.invalidity_date: only allowed for REVOKED")
            if item.HasField("revocation_reason"):
                raise _invalid(f"{where}.revocation_reason: only allowed for REVOKED")

        return SingleStatus(cert_id=cert_id, status=status, this_update=this_update,
                            next_update=next_update, revocation=revocation)


def unknown_field(message: Message, where: str = "") -> str | None:
    """Where the first field this signer's proto/signer.proto does not define sits in ``message`` (at any
    depth), e.g. ``"unknown field 15 in responses[0].cert_id"``; None when there is none. Protobuf keeps
    such fields (UnknownFieldSet) instead of dropping them, so they would ride along with a valid
    request for as long as the call lives."""
    found = _first_unknown(message)
    if found is None:
        return None
    number, path = found
    where = ".".join(part for part in (where, path) if part)
    return f"unknown field {number}" + (f" in {where}" if where else "")


def _first_unknown(message: Message) -> tuple[int, str] | None:
    """(field number, path below ``message``) of the first unknown field, depth first, submessages in
    field-number order (as ``ListFields`` lists them) through each type's message fields
    (``_message_fields``); the path is only written for the one found."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        return unknown[0].field_number, ""
    for name, repeated in _message_fields(message.DESCRIPTOR):
        if repeated:
            for i, item in enumerate(getattr(message, name)):
                found = _first_unknown(item)
                if found is not None:
                    return found[0], f"{name}[{i}]" + (f".{found[1]}" if found[1] else "")
        elif message.HasField(name):
            found = _first_unknown(getattr(message, name))
            if found is not None:
                return found[0], name + (f".{found[1]}" if found[1] else "")
    return None


_MESSAGE_FIELDS: dict[Any, tuple[tuple[str, bool], ...]] = {}


def _message_fields(descriptor: Any) -> tuple[tuple[str, bool], ...]:
    """(name, repeated) of each message-typed field of a message type, by field number; computed once
    per type (ListFields on every message of every request cost more than the rest of the walk)."""
    fields = _MESSAGE_FIELDS.get(descriptor)
    if fields is None:
        fields = tuple((f.name, f.is_repeated) for f in sorted(descriptor.fields, key=lambda f: f.number)
                       if f.message_type is not None)
        _MESSAGE_FIELDS[descriptor] = fields
    return fields


def check_known_fields(message: Message) -> None:
    """PolicyError (INVALID_ARGUMENT) when ``message`` carries a field the signer does not know."""
    found = unknown_field(message)
    if found is not None:
        raise _invalid(f"{found} of {message.DESCRIPTOR.name}: this signer does not know it (a frontend newer "
                       "than the signer? upgrade signers first)")


def largest_sign_request(max_cert_ids: int) -> pb.SignRequest:
    """The largest SignRequest ``Policy.check`` can accept with ``max_cert_ids``: every bytes field at its
    longest (request_id of MAX_REQUEST_ID four-byte characters, SHA-512 hashes, a 21-octet serial, a
    nonce of MAX_NONCE octets in a long-form OCTET STRING) and every number at its longest encoding
    among the values policy admits. The receive limit (signer.service) is sized from it."""
    latest = MAX_TIME
    item = pb.SingleStatus(
        cert_id=pb.CertId(hash_algorithm=pb.SHA512, issuer_name_hash=b"\xff" * 64, issuer_key_hash=b"\xff" * 64,
                          serial_number=b"\x00" + b"\xff" * MAX_SERIAL_VALUE_OCTETS),
        status=pb.REVOKED, revocation_time=latest, revocation_reason=max(_REASONS), invalidity_date=latest,
        this_update=latest, next_update=latest)
    nonce = b"\x04\x81" + bytes([MAX_NONCE]) + b"\xff" * MAX_NONCE
    return pb.SignRequest(request_id="\U0010ffff" * MAX_REQUEST_ID, responses=[item] * max_cert_ids, nonce=nonce)


def largest_sign_batch_size(max_batch: int, max_cert_ids: int) -> int:
    """The encoded size of the largest SignBatchRequest policy accepts: ``max_batch`` of the largest
    SignRequests (``largest_sign_request``), each a field-1 tag, its length and itself (computed, not
    built: a batch of 1024 requests of 1000 CertIDs would be a million messages)."""
    one = largest_sign_request(max_cert_ids).ByteSize()
    length_octets = (one.bit_length() + 6) // 7 or 1
    return max_batch * (1 + length_octets + one)


def _cert_id(where: str, item: pb.SingleStatus) -> CertId:
    if not item.HasField("cert_id"):
        raise _invalid(f"{where}.cert_id: missing")
    c = item.cert_id
    algorithm = _HASHES.get(c.hash_algorithm)
    if algorithm is None:
        raise _invalid(f"{where}.cert_id.hash_algorithm: must be SHA1, SHA256, SHA384 or SHA512")
    size = DIGEST_SIZES[algorithm]
    name_hash, key_hash = bytes(c.issuer_name_hash), bytes(c.issuer_key_hash)
    for name, value in (("issuer_name_hash", name_hash), ("issuer_key_hash", key_hash)):
        if len(value) != size:
            raise _invalid(f"{where}.cert_id.{name}: {len(value)} octets; {algorithm.name} gives {size}")
    serial = bytes(c.serial_number)
    problem = serial_problem(serial)
    if problem is not None:
        raise _invalid(f"{where}.cert_id.serial_number: {problem}")
    return CertId(algorithm, name_hash, key_hash, serial)


def _time(name: str, seconds: int, *, allow_zero: bool = False) -> datetime:
    cached = _TIMES.get(seconds)  # 1..MAX_TIME only: valid whatever allow_zero says
    if cached is not None:
        return cached
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise _invalid(f"{name}: required (seconds since the Unix epoch)")
    if seconds > MAX_TIME:
        raise _invalid(f"{name}: {seconds} is beyond 9999-12-31")
    t = EPOCH + timedelta(seconds=seconds)
    if seconds:
        if len(_TIMES) >= _MAX_TIMES:
            _TIMES.clear()
        _TIMES[seconds] = t
    return t


# Times of the last requests (thisUpdate and nextUpdate repeat across the statuses of one status
# data generation): seconds -> datetime, bounded.
_TIMES: dict[int, datetime] = {}
_MAX_TIMES = 4096
