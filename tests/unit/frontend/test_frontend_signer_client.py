"""frontend.signer_client against an in-process grpc.aio signer stand-in (no token, no policy)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc import aio

from frontend.signer_client import SignerClient, to_proto
from shared.ocsp.errors import InternalError, TryLater, Unauthorized
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, Revocation, RevocationReason, SingleStatus
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CID = CertId(HashAlgorithm.SHA256, b"n" * 32, b"k" * 32, b"\x01\x02")


class Stand(signer_pb2_grpc.SignerServicer):
    def __init__(self) -> None:
        self.abort_with: grpc.StatusCode | None = None
        self.seen: list[pb.SignRequest] = []

    async def Sign(self, request: pb.SignRequest, context: aio.ServicerContext) -> pb.SignReply:
        self.seen.append(request)
        if self.abort_with is not None:
            await context.abort(self.abort_with, "no")
        return pb.SignReply(ocsp_response=b"DER" + request.responses[0].cert_id.serial_number, generation=3)


async def start(address: str, stand: Stand) -> aio.Server:
    server = aio.server()
    signer_pb2_grpc.add_SignerServicer_to_server(stand, server)
    server.add_insecure_port(address)
    await server.start()
    return server


def statuses() -> list[SingleStatus]:
    rev = Revocation(T0 - timedelta(days=1), RevocationReason.KEY_COMPROMISE, T0 - timedelta(days=2))
    return [SingleStatus(CID, CertStatus.GOOD, T0, T0 + timedelta(hours=1)),
            SingleStatus(CID, CertStatus.REVOKED, T0, T0 + timedelta(hours=1), rev)]


def test_to_proto() -> None:
    req = to_proto(statuses(), "id-1", b"\x04\x02ab")
    assert req.request_id == "id-1" and req.nonce == b"\x04\x02ab"
    good, revoked = req.responses
    assert good.cert_id.hash_algorithm == pb.SHA256 and good.cert_id.serial_number == b"\x01\x02"
    assert good.status == pb.GOOD and good.this_update == int(T0.timestamp())
    assert not good.HasField("revocation_reason") and good.revocation_time == 0
    assert revoked.status == pb.REVOKED and revoked.revocation_reason == 1
    assert revoked.revocation_time == int((T0 - timedelta(days=1)).timestamp())
    assert revoked.invalidity_date == int((T0 - timedelta(days=2)).timestamp())
    assert not to_proto(statuses(), "x", None).HasField("nonce")


@pytest.mark.parametrize("code,error", [
    (grpc.StatusCode.UNAVAILABLE, TryLater), (grpc.StatusCode.DEADLINE_EXCEEDED, TryLater),
    (grpc.StatusCode.FAILED_PRECONDITION, TryLater), (grpc.StatusCode.RESOURCE_EXHAUSTED, TryLater),
    (grpc.StatusCode.PERMISSION_DENIED, Unauthorized), (grpc.StatusCode.INVALID_ARGUMENT, TryLater),
    (grpc.StatusCode.ABORTED, TryLater), (grpc.StatusCode.INTERNAL, InternalError),
])
def test_error_mapping(tmp_path: Path, code: grpc.StatusCode, error: type) -> None:
    async def go() -> None:
        stand = Stand()
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 2.0)
        try:
            assert (await client.sign(statuses(), None)).der == b"DER\x01\x02"
            stand.abort_with = code
            with pytest.raises(error):
                await client.sign(statuses(), None)
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


@pytest.mark.parametrize("code,words", [(grpc.StatusCode.INVALID_ARGUMENT, "policy refused"),
                                        (grpc.StatusCode.ABORTED, "status data disagrees")])
def test_policy_refusal_is_try_later_and_logged_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            code: grpc.StatusCode, words: str) -> None:
    # INVALID_ARGUMENT is the signer's policy refusing (e.g. a CRL thisUpdate ahead of its clock),
    # ABORTED its own status data disagreeing with ours: tryLater for the client, and the operator is
    # told why, once per interval rather than per request.
    async def go() -> None:
        stand = Stand()
        stand.abort_with = code
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 2.0)
        try:
            for _ in range(3):
                with pytest.raises(TryLater):
                    await client.sign(statuses(), None)
        finally:
            await client.close()
            await server.stop(None)

    with caplog.at_level("ERROR", logger="frontend.signer_client"):
        asyncio.run(go())
    (record,) = [r for r in caplog.records if r.name == "frontend.signer_client"]
    assert words in record.getMessage() and f"{code.name}: no" in record.getMessage()


def test_dead_signer_fails_fast_then_recovers(tmp_path: Path) -> None:
    async def go() -> None:
        address = f"unix:{tmp_path}/s.sock"
        stand = Stand()
        server = await start(address, stand)
        client = SignerClient([address], 5.0)
        try:
            r = await client.sign(statuses(), None)
            assert r.generation == 3
            await server.stop(None)
            t = time.monotonic()
            with pytest.raises(TryLater):
                await client.sign(statuses(), None)
            assert time.monotonic() - t < 2.0  # not the 5 s deadline: wait_for_ready=False
            server = await start(address, stand)
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.sign(statuses(), None)
                    break
                except TryLater:
                    assert time.monotonic() < deadline, "client did not reconnect to the restarted signer"
                    await asyncio.sleep(0.1)
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


def test_failover_to_second_address(tmp_path: Path) -> None:
    async def go() -> None:
        live = f"unix:{tmp_path}/live.sock"
        dead = f"unix:{tmp_path}/dead.sock"
        server = await start(live, Stand())
        client = SignerClient([dead, live], 2.0)
        try:
            for _ in range(4):  # whichever channel the round-robin starts with
                assert (await client.sign(statuses(), None)).der == b"DER\x01\x02"
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


def test_an_error_names_its_sign_request(tmp_path: Path) -> None:
    """Each failed Sign raises an error of its own naming its request_id (the access log's id, and the
    id of the signer's refusal record when it refused), also when one error fails a whole batch."""
    async def go() -> None:
        stand = Stand()
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 2.0)
        try:
            ok = await client.sign(statuses(), None)
            assert ok.request_id == stand.seen[-1].request_id and ok.request_id.startswith(client.ids.prefix)
            stand.abort_with = grpc.StatusCode.FAILED_PRECONDITION
            results = await asyncio.gather(*(client.sign(statuses(), None) for _ in range(3)),
                                           return_exceptions=True)
            assert all(isinstance(r, TryLater) for r in results), results
            ids = [r.request_id for r in results if isinstance(r, TryLater)]
            assert len(set(ids)) == 3 and set(ids) <= {r.request_id for r in stand.seen}
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())
