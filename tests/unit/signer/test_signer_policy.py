"""signer.policy: every field of a SignRequest against the signer's own limits (FakeClock, no token)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from shared.clock import FakeClock
from shared.ocsp.response import responder_id
from shared.ocsp.types import CertStatus, HashAlgorithm, IssuerKey, RevocationReason
from shared.rpc import signer_pb2 as pb
from signer.config import PolicyConfig
from signer.mechanisms import SignatureAlgorithm
from signer.policy import Policy, PolicyError
from signer.responders import Responder

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
HOUR, DAY = 3600, 86400

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

SIZES = {pb.SHA1: 20, pb.SHA256: 32, pb.SHA384: 48, pb.SHA512: 64}
HASHES = {pb.SHA1: HashAlgorithm.SHA1, pb.SHA256: HashAlgorithm.SHA256, pb.SHA384: HashAlgorithm.SHA384,
          pb.SHA512: HashAlgorithm.SHA512}


CA_NOT_BEFORE = NOW - timedelta(days=3650)
RESPONDER_ID = responder_id((Path(__file__).resolve().parents[2] / "vectors" / "responder.der").read_bytes())


def responder(name: str, *, not_before: datetime = NOW - timedelta(days=30),
              not_after: datetime = NOW + timedelta(days=30)) -> Responder:
    return Responder(name=name, issuer_cert=b"", cert=b"", key_label=name,
                     algorithm=SignatureAlgorithm.ECDSA_SHA256, responder_id=RESPONDER_ID, include_cert=True,
                     generation=1, fingerprint="00", not_before=not_before, not_after=not_after,
                     ca_not_before=CA_NOT_BEFORE)


class FakeResponders:
    """Issuer A answers for name hash 0xAA.., issuer B for 0xBB.., under every hash algorithm."""

    def __init__(self, a: Responder | None = None) -> None:
        self.a = a or responder("ca-a")
        self.b = responder("ca-b")

    def get(self, key: IssuerKey) -> Responder | None:
        for byte, r in ((b"\xaa", self.a), (b"\xbb", self.b)):
            size = SIZES[next(k for k, v in HASHES.items() if v is key.hash_algorithm)]
            if key.issuer_name_hash == byte * size and key.issuer_key_hash == byte * size:
                return r
        return None


def cert_id(issuer: bytes = b"\xaa", algorithm: int = pb.SHA1, serial: bytes = b"\x01\x02") -> pb.CertId:
    n = SIZES.get(algorithm, 20)
    return pb.CertId(hash_algorithm=algorithm, issuer_name_hash=issuer * n, issuer_key_hash=issuer * n,
                     serial_number=serial)


def good(**kw: object) -> pb.SingleStatus:
    fields: dict[str, object] = {"cert_id": cert_id(), "status": pb.GOOD, "this_update": T - HOUR,
                                 "next_update": T + DAY}
    fields.update(kw)
    return pb.SingleStatus(**fields)  # type: ignore[arg-type]


def revoked(**kw: object) -> pb.SingleStatus:
    fields: dict[str, object] = {"status": pb.REVOKED, "revocation_time": T - DAY, "revocation_reason": 1}
    fields.update(kw)
    return good(**fields)


def request(*responses: pb.SingleStatus, nonce: bytes | None = None,
            request_id: str = "r1") -> pb.SignRequest:
    req = pb.SignRequest(request_id=request_id, responses=list(responses) or [good()])
    if nonce is not None:
        req.nonce = nonce
    return req


def octet_string(content: bytes) -> bytes:
    assert len(content) < 128
    return b"\x04" + bytes([len(content)]) + content


POLICY = PolicyConfig(max_validity=timedelta(days=7), max_clock_skew=timedelta(minutes=5), max_cert_ids=4)

Case = tuple[str, Callable[[], pb.SignRequest], grpc.StatusCode, str]

CASES: list[Case] = [
    # id, request, expected code, substring of the message
    ("good", lambda: request(), OK, ""),
    ("unknown", lambda: request(good(status=pb.UNKNOWN)), OK, ""),
    ("revoked", lambda: request(revoked()), OK, ""),
    ("revoked-no-reason", lambda: request(revoked(revocation_reason=None)), OK, ""),
    ("revoked-invalidity", lambda: request(revoked(invalidity_date=T - 2 * DAY)), OK, ""),
    ("extended-revoked", lambda: request(revoked(revocation_time=0, revocation_reason=6)), OK, ""),
    ("all-hashes", lambda: request(*(good(cert_id=cert_id(algorithm=a)) for a in SIZES)), OK, ""),
    ("max-cert-ids", lambda: request(*(good(cert_id=cert_id(serial=bytes([1, i]))) for i in range(4))), OK, ""),
    # what no honest frontend sends
    ("same-cert-id-twice", lambda: request(good(), revoked()), INVALID, "the same CertID twice, with two"),
    ("same-cert-id-twice-other-window", lambda: request(good(), good(next_update=T + 2 * DAY)), INVALID,
     "the same CertID twice, with two"),
    ("same-cert-id-twice-agreeing", lambda: request(good(), good()), OK, ""),
    ("one-serial-two-hashes-agreeing", lambda: request(good(), good(cert_id=cert_id(algorithm=pb.SHA256))),
     OK, ""),
    ("one-serial-two-hashes-disagreeing",
     lambda: request(good(), revoked(cert_id=cert_id(algorithm=pb.SHA256))), INVALID, "the same serial 0102 twice"),
    ("revoked-before-the-ca", lambda: request(revoked(revocation_time=int(CA_NOT_BEFORE.timestamp()) - 1)),
     INVALID, "before the CA certificate"),
    ("revoked-when-the-ca-began", lambda: request(revoked(revocation_time=int(CA_NOT_BEFORE.timestamp()))), OK, ""),
    ("invalidity-after-revocation", lambda: request(revoked(invalidity_date=T - DAY + 1)),
     INVALID, "is after the revocation time"),
    ("invalidity-at-revocation", lambda: request(revoked(invalidity_date=T - DAY)), OK, ""),
    ("this-update-within-skew", lambda: request(good(this_update=T + 300)), OK, ""),
    ("validity-exactly-max", lambda: request(good(this_update=T - HOUR, next_update=T - HOUR + 7 * DAY)),
     OK, ""),
    ("serial-20", lambda: request(good(cert_id=cert_id(serial=b"\x01" * 20))), OK, ""),
    ("serial-20-with-sign", lambda: request(good(cert_id=cert_id(serial=b"\x00" + b"\x81" * 20))), OK, ""),
    ("serial-21", lambda: request(good(cert_id=cert_id(serial=b"\x01" * 21))), INVALID, "RFC 5280 allows"),
    ("serial-64", lambda: request(good(cert_id=cert_id(serial=b"\x01" * 64))), INVALID, "RFC 5280 allows"),
    ("nonce-1", lambda: request(nonce=octet_string(b"\x01")), OK, ""),
    ("nonce-legacy-raw", lambda: request(nonce=b"\x01" * 16), OK, ""),
    ("nonce-128", lambda: request(nonce=b"\x04\x81\x80" + b"\x07" * 128), OK, ""),
    # issuers
    ("unconfigured-issuer", lambda: request(good(cert_id=cert_id(issuer=b"\xcc"))), DENIED, "not configured"),
    # A served issuer first, then one this signer does not serve: never signed under the first's key.
    ("served-then-unconfigured", lambda: request(good(), good(cert_id=cert_id(issuer=b"\xcc"))),
     DENIED, "responses[1].cert_id: this signer is not configured"),
    ("two-responders", lambda: request(good(), good(cert_id=cert_id(issuer=b"\xbb"))),
     DENIED, "one responder"),
    # counts
    ("too-many", lambda: request(*(good(cert_id=cert_id(serial=bytes([1, i]))) for i in range(5))), INVALID, "1..4"),
    ("request-id-long", lambda: request(request_id="x" * 257), INVALID, "request_id"),
    # CertID shape
    ("no-cert-id", lambda: request(pb.SingleStatus(status=pb.GOOD, this_update=T, next_update=T + DAY)),
     INVALID, "cert_id: missing"),
    ("hash-unset", lambda: request(good(cert_id=cert_id(algorithm=pb.HASH_ALGORITHM_UNSPECIFIED))),
     INVALID, "hash_algorithm"),
    ("hash-unknown-enum", lambda: request(good(cert_id=cert_id(algorithm=99))), INVALID, "hash_algorithm"),
    ("name-hash-short", lambda: request(good(cert_id=pb.CertId(
        hash_algorithm=pb.SHA256, issuer_name_hash=b"\xaa" * 20, issuer_key_hash=b"\xaa" * 32,
        serial_number=b"\x01"))),
     INVALID, "issuer_name_hash: 20 octets"),
    ("key-hash-long", lambda: request(good(cert_id=pb.CertId(
        hash_algorithm=pb.SHA1, issuer_name_hash=b"\xaa" * 20, issuer_key_hash=b"\xaa" * 21,
        serial_number=b"\x01"))),
     INVALID, "issuer_key_hash"),
    ("serial-empty", lambda: request(good(cert_id=cert_id(serial=b""))), INVALID, "serial_number"),
    ("serial-65", lambda: request(good(cert_id=cert_id(serial=b"\x01" * 65))), INVALID, "serial_number"),
    ("serial-not-der", lambda: request(good(cert_id=cert_id(serial=b"\x00\x01"))), INVALID, "minimal"),
    ("serial-not-der-neg", lambda: request(good(cert_id=cert_id(serial=b"\xff\x80"))), INVALID, "minimal"),
    # status
    ("status-unset", lambda: request(good(status=pb.CERT_STATUS_UNSPECIFIED)), INVALID, "status"),
    ("status-unknown-enum", lambda: request(good(status=42)), INVALID, "status"),
    # revocation fields
    ("revoked-no-time", lambda: request(revoked(revocation_time=0)), INVALID, "revocation_time: required"),
    ("revoked-negative-time", lambda: request(revoked(revocation_time=-5)), INVALID, "revocation_time"),
    ("revoked-future", lambda: request(revoked(revocation_time=T + 301)), INVALID, "in the future"),
    ("revoked-within-skew", lambda: request(revoked(revocation_time=T + 300)), OK, ""),
    ("reason-7", lambda: request(revoked(revocation_reason=7)), INVALID, "not a CRLReason"),
    ("reason-11", lambda: request(revoked(revocation_reason=11)), INVALID, "not a CRLReason"),
    ("invalidity-future", lambda: request(revoked(invalidity_date=T + DAY)), INVALID, "invalidity_date"),
    ("good-with-time", lambda: request(good(revocation_time=T - DAY)), INVALID, "only allowed for REVOKED"),
    ("good-with-reason", lambda: request(good(revocation_reason=0)), INVALID, "only allowed for REVOKED"),
    ("unknown-with-invalidity", lambda: request(good(status=pb.UNKNOWN, invalidity_date=T - DAY)),
     INVALID, "only allowed for REVOKED"),
    # validity window
    ("this-update-unset", lambda: request(good(this_update=0)), INVALID, "this_update: required"),
    ("this-update-future", lambda: request(good(this_update=T + 301)), INVALID, "this_update"),
    ("next-update-unset", lambda: request(good(next_update=0)), INVALID, "next_update"),
    ("next-equals-this", lambda: request(good(this_update=T, next_update=T)), INVALID, "after this_update"),
    ("next-before-this", lambda: request(good(this_update=T, next_update=T - 1)),
     INVALID, "after this_update"),
    ("validity-too-long", lambda: request(good(this_update=T - HOUR, next_update=T - HOUR + 7 * DAY + 1)),
     INVALID, "exceeds"),
    ("already-expired", lambda: request(good(this_update=T - 2 * DAY, next_update=T - DAY)),
     INVALID, "has passed"),
    ("expires-now", lambda: request(good(this_update=T - DAY, next_update=T)), INVALID, "has passed"),
    ("time-overflow", lambda: request(good(next_update=2**62)), INVALID, "beyond 9999"),
    # nonce
    ("nonce-empty", lambda: request(nonce=b""), INVALID, "nonce"),
    ("nonce-empty-octet-string", lambda: request(nonce=b"\x04\x00"), INVALID, "nonce"),
    ("nonce-129", lambda: request(nonce=b"\x04\x81\x81" + b"\x07" * 129), INVALID, "nonce"),
    ("nonce-raw-129", lambda: request(nonce=b"\x01" * 129), INVALID, "nonce"),
]


@pytest.mark.parametrize("name,make,code,message", CASES, ids=[c[0] for c in CASES])
def test_policy(name: str, make: Callable[[], pb.SignRequest], code: grpc.StatusCode, message: str) -> None:
    policy = Policy(POLICY, FakeClock(NOW))
    req = make()
    if code is OK:
        job = policy.check(req, FakeResponders())  # type: ignore[arg-type]
        assert job.responder.name == "ca-a"
        assert len(job.statuses) == len(req.responses)
        return
    with pytest.raises(PolicyError) as info:
        policy.check(req, FakeResponders())  # type: ignore[arg-type]
    assert info.value.code == code
    assert message in info.value.message, info.value.message


def test_typed_values() -> None:
    req = request(
        revoked(cert_id=cert_id(algorithm=pb.SHA256, serial=b"\x00\xff"), revocation_reason=9,
                invalidity_date=T - 2 * DAY),
        good(status=pb.UNKNOWN),
        nonce=octet_string(b"nonce"),
        request_id="abc",
    )
    job = Policy(POLICY, FakeClock(NOW)).check(req, FakeResponders())  # type: ignore[arg-type]
    assert job.request_id == "abc"
    assert job.nonce == octet_string(b"nonce")
    first, second = job.statuses
    assert first.cert_id.hash_algorithm is HashAlgorithm.SHA256
    assert first.cert_id.serial == b"\x00\xff"
    assert first.status is CertStatus.REVOKED
    assert first.revocation is not None
    assert first.revocation.time == NOW - timedelta(days=1)
    assert first.revocation.reason is RevocationReason.PRIVILEGE_WITHDRAWN
    assert first.revocation.invalidity_date == NOW - timedelta(days=2)
    assert first.this_update == NOW - timedelta(hours=1)
    assert first.next_update == NOW + timedelta(days=1)
    assert first.this_update.tzinfo is not None
    assert second.status is CertStatus.UNKNOWN and second.revocation is None


def test_extended_revoked_is_epoch() -> None:
    job = Policy(POLICY, FakeClock(NOW)).check(
        request(revoked(revocation_time=0, revocation_reason=6)), FakeResponders())  # type: ignore[arg-type]
    rev = job.statuses[0].revocation
    assert rev is not None and rev.time == datetime(1970, 1, 1, tzinfo=UTC)
    assert rev.reason is RevocationReason.CERTIFICATE_HOLD


def test_no_nonce_is_none() -> None:
    job = Policy(POLICY, FakeClock(NOW)).check(request(), FakeResponders())  # type: ignore[arg-type]
    assert job.nonce is None


@pytest.mark.parametrize("not_before,not_after", [
    (NOW + timedelta(seconds=1), NOW + timedelta(days=30)),  # not yet valid
    (NOW - timedelta(days=30), NOW - timedelta(seconds=1)),  # expired
])
def test_responder_cert_not_valid_now(not_before: datetime, not_after: datetime) -> None:
    responders = FakeResponders(responder("ca-a", not_before=not_before, not_after=not_after))
    with pytest.raises(PolicyError) as info:
        Policy(POLICY, FakeClock(NOW)).check(request(), responders)  # type: ignore[arg-type]
    assert info.value.code == PRECONDITION


def test_clock_is_read_per_request() -> None:
    clock = FakeClock(NOW)
    policy = Policy(POLICY, clock)
    req = request(good(this_update=T - HOUR, next_update=T + HOUR))
    policy.check(req, FakeResponders())  # type: ignore[arg-type]
    clock.advance(timedelta(hours=1))
    with pytest.raises(PolicyError, match="has passed"):
        policy.check(req, FakeResponders())  # type: ignore[arg-type]


def test_time_cache_keeps_every_refusal() -> None:
    """Converted times are cached (signer.policy._time); zero is never cached, so it stays refused
    where it is not the extended-revoked form, and the cache stays bounded."""
    from signer import policy as policy_module

    policy = Policy(POLICY, FakeClock(NOW))
    policy.check(request(revoked(revocation_time=0, revocation_reason=6)), FakeResponders())  # type: ignore[arg-type]
    for bad, where in ((good(this_update=0), "this_update"), (revoked(revocation_time=0), "revocation_time")):
        with pytest.raises(PolicyError, match=f"{where}: required"):
            policy.check(request(bad), FakeResponders())  # type: ignore[arg-type]
    for i in range(policy_module._MAX_TIMES + 10):
        assert policy_module._time("t", T + i) == NOW + timedelta(seconds=i)
    assert len(policy_module._TIMES) <= policy_module._MAX_TIMES


def _reference_unknown_field(message: Message, where: str = "") -> str | None:
    """signer.policy.unknown_field as it was (ListFields on every message): the oracle."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        return f"unknown field {unknown[0].field_number}" + (f" in {where}" if where else "")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                found = _reference_unknown_field(item, f"{where}.{field.name}[{i}]".lstrip("."))
                if found:
                    return found
        else:
            found = _reference_unknown_field(value, f"{where}.{field.name}".lstrip("."))
            if found:
                return found
    return None


def _with_unknown(message: Message, extra: bytes) -> Message:
    return type(message).FromString(message.SerializeToString() + extra)


FIELD_15, FIELD_100 = b"\x7a\x03abc", b"\xa0\x06\x01"  # a length-delimited field 15, a varint field 100


def _unknown_cases() -> list[Message]:
    plain = request(good(), good(cert_id=cert_id(serial=b"\x05")))
    cases: list[Message] = [plain, _with_unknown(plain, FIELD_15)]
    for index in (0, 1):
        for target in ("item", "cert_id"):
            for extra in (FIELD_15, FIELD_100):
                req = request(good(), good(cert_id=cert_id(serial=b"\x05")))
                item = req.responses[index]
                if target == "item":
                    item.CopyFrom(_with_unknown(item, extra))
                else:
                    item.cert_id.CopyFrom(_with_unknown(item.cert_id, extra))
                cases.append(req)
    both = request(good(), good(cert_id=cert_id(serial=b"\x05")))
    both.responses[1].CopyFrom(_with_unknown(both.responses[1], FIELD_15))
    both.responses[0].cert_id.CopyFrom(_with_unknown(both.responses[0].cert_id, FIELD_100))
    cases += [both, pb.SignBatchRequest(requests=[plain, both]), _with_unknown(pb.SignBatchRequest(requests=[plain]),
                                                                             FIELD_15)]
    return cases


@pytest.mark.parametrize("message", _unknown_cases())
def test_unknown_field_reports_what_the_listfields_walk_reported(message: Message) -> None:
    from signer.policy import unknown_field

    assert unknown_field(message) == _reference_unknown_field(message)
    assert unknown_field(message, "batch") == _reference_unknown_field(message, "batch")
