"""frontend.signer_client's batching sender against in-process grpc.aio signer stand-ins: an idle line
sends at once, concurrent signs share calls, each caller gets its own item's outcome mapped as a unary
Sign's error would be (failover per item), a signer without SignBatch gets unary Signs (logged once),
and one with a lower [policy] max_batch gets shorter batches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc import aio

from frontend.signer_client import DEFAULT_MAX_BATCH, SignerClient
from shared.ocsp.errors import InternalError, StatusDisagrees, TryLater, Unauthorized
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, SingleStatus
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from shared.rpc.metadata import MAX_BATCH, REFUSED
from signer.config import DEFAULT_MAX_BATCH as SIGNER_DEFAULT_MAX_BATCH

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# What the stand answers for a request, by its serial's first octet (0: signed).
ERRORS = {1: grpc.StatusCode.PERMISSION_DENIED, 2: grpc.StatusCode.ABORTED, 3: grpc.StatusCode.INVALID_ARGUMENT,
          4: grpc.StatusCode.INTERNAL, 5: grpc.StatusCode.UNAVAILABLE, 6: grpc.StatusCode.FAILED_PRECONDITION}


def statuses(kind: int, n: int = 0) -> list[SingleStatus]:
    cid = CertId(HashAlgorithm.SHA256, b"n" * 32, b"k" * 32, bytes([kind, n]))
    return [SingleStatus(cid, CertStatus.GOOD, T0, T0 + timedelta(hours=1))]


class BatchStand(signer_pb2_grpc.SignerServicer):
    """SignBatch answering each request by its serial (ERRORS); ``gate``: the first call waits for it."""

    def __init__(self, name: str = "a", max_batch: int = 1000,
                 errors: dict[int, grpc.StatusCode] | None = None) -> None:
        self.name = name
        self.errors = ERRORS if errors is None else errors
        self.max_batch = max_batch
        self.batches: list[int] = []  # requests per SignBatch call, in arrival order
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.gate_every = False  # every call waits for ``gate``, not only the first
        self.signs = 0

    async def SignBatch(self, request: pb.SignBatchRequest, context: aio.ServicerContext) -> pb.SignBatchReply:
        n = len(request.requests)
        if n > self.max_batch:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            await context.abort(code, f"requests: {n} entries", trailing_metadata=(
                (REFUSED, code.name), (MAX_BATCH, str(self.max_batch))))
        self.batches.append(n)
        self.arrived.set()
        if self.gate is not None and (len(self.batches) == 1 or self.gate_every):
            await self.gate.wait()
        items = []
        for r in request.requests:
            serial = r.responses[0].cert_id.serial_number
            code = self.errors.get(serial[0])
            if code is None:
                items.append(pb.SignBatchItem(reply=pb.SignReply(
                    ocsp_response=self.name.encode() + serial, generation=2)))
            else:
                items.append(pb.SignBatchItem(error=pb.SignError(code=code.value[0], message=f"no {serial.hex()}",
                                                                 refused=True)))
        return pb.SignBatchReply(items=items)

    async def Sign(self, request: pb.SignRequest, context: aio.ServicerContext) -> pb.SignReply:
        self.signs += 1
        return pb.SignReply(ocsp_response=b"unary" + request.responses[0].cert_id.serial_number)


async def start(address: str, servicer: object) -> aio.Server:
    server = aio.server()
    signer_pb2_grpc.add_SignerServicer_to_server(servicer, server)  # type: ignore[arg-type]
    server.add_insecure_port(address)
    await server.start()
    return server


async def queued(client: SignerClient, n: int) -> None:
    """Let the sign() tasks just created run up to their wait (one pass of the loop: each queues its
    request and waits), then check that all ``n`` are queued behind the call in flight."""
    await asyncio.sleep(0)  # a yield to the loop, not a wait for time
    assert len(client._queue) == n


def test_default_max_batch_agrees_with_the_signer() -> None:
    assert DEFAULT_MAX_BATCH == SIGNER_DEFAULT_MAX_BATCH


def test_idle_line_sends_at_once_and_concurrent_signs_share_calls(tmp_path: Path) -> None:
    async def go() -> None:
        stand = BatchStand()
        stand.gate = asyncio.Event()
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 5.0)
        try:
            first = asyncio.ensure_future(client.sign(statuses(0, 0), None))
            await stand.arrived.wait()
            assert stand.batches == [1]  # sent alone, at once: nothing waited for company
            # While that call is in flight, 30 more queue; they go out together when it returns.
            rest = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(1, 31)]
            await queued(client, 30)
            stand.gate.set()
            results = await asyncio.gather(first, *rest)
            assert [r.der for r in results] == [b"a\x00" + bytes([i]) for i in range(31)]
            assert all(r.generation == 2 and r.signer == address for r in results)
            assert stand.batches == [1, 30] and client.batch_calls == 2
            # More than max_batch queued: split into calls of at most max_batch.
            client.max_batch = 8
            stand.gate = asyncio.Event()
            stand.batches.clear()
            stand.arrived.clear()
            head = asyncio.ensure_future(client.sign(statuses(0, 0), None))
            await stand.arrived.wait()
            more = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(20)]
            await queued(client, 20)
            stand.gate.set()
            await asyncio.gather(head, *more)
            assert stand.batches[0] == 1 and sum(stand.batches) == 21 and max(stand.batches) <= 8
            assert len(stand.batches) < 21
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


def test_each_item_maps_as_a_unary_sign_would(tmp_path: Path) -> None:
    expected = {0: None, 1: Unauthorized, 2: StatusDisagrees, 3: TryLater, 4: InternalError, 5: TryLater,
                6: TryLater}

    async def go() -> None:
        stand = BatchStand()
        stand.gate = asyncio.Event()
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 5.0)
        try:
            first = asyncio.ensure_future(client.sign(statuses(0, 99), None))
            await stand.arrived.wait()
            calls = {k: asyncio.ensure_future(client.sign(statuses(k), None)) for k in expected}
            await queued(client, len(expected))
            stand.gate.set()
            assert (await first).der == b"a\x00\x63"
            await asyncio.gather(*calls.values(), return_exceptions=True)
            assert stand.batches == [1, len(expected)]  # one call; each caller its own outcome
            for k, error in expected.items():
                if error is None:
                    assert calls[k].result().der == b"a\x00\x00"
                    continue
                exc = calls[k].exception()
                assert type(exc) is error, (k, exc)
                assert f"signer: {ERRORS[k].name}: no {k:02x}00" in str(exc)
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


def test_failed_items_fail_over_alone(tmp_path: Path) -> None:
    """Two signers: a request the first refuses UNAVAILABLE (its token or audit log down there) goes on
    to the second, alone; a refusal that is not a failover code is final."""

    async def go() -> None:
        a = BatchStand("a")
        b = BatchStand("b", errors={k: v for k, v in ERRORS.items() if k != 5})  # serial 5 is fine at b
        addresses = [f"unix:{tmp_path}/a.sock", f"unix:{tmp_path}/b.sock"]
        servers = [await start(addresses[0], a), await start(addresses[1], b)]
        client = SignerClient(addresses, 5.0)
        try:
            # One call in flight per address: the first two go out at once (to a, then b), the third
            # when one returns (to a, round-robin), which refuses it UNAVAILABLE: it goes to b.
            good, refused, moved = await asyncio.gather(*(client.sign(statuses(k), None) for k in (0, 1, 5)),
                                                        return_exceptions=True)
            assert not isinstance(good, BaseException) and good.der == b"a\x00\x00" and good.signer == addresses[0]
            assert isinstance(refused, Unauthorized)
            assert not isinstance(moved, BaseException) and moved.der == b"b\x05\x00"
            assert moved.signer == addresses[1]
            assert a.batches == [1, 1] and b.batches == [1, 1]
        finally:
            await client.close()
            for s in servers:
                await s.stop(None)

    asyncio.run(go())


def test_older_signer_without_sign_batch_gets_unary_signs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A signer from before SignBatch: the method does not exist there (UNIMPLEMENTED). Logged once."""

    async def go() -> None:
        stand = BatchStand()

        async def sign(request: pb.SignRequest, context: aio.ServicerContext) -> pb.SignReply:
            return await stand.Sign(request, context)

        handler = grpc.method_handlers_generic_handler("ocsp.signer.v1.Signer", {
            "Sign": grpc.unary_unary_rpc_method_handler(sign, request_deserializer=pb.SignRequest.FromString,
                                                        response_serializer=pb.SignReply.SerializeToString)})
        server = aio.server()
        server.add_generic_rpc_handlers((handler,))
        address = f"unix:{tmp_path}/old.sock"
        server.add_insecure_port(address)
        await server.start()
        client = SignerClient([address], 5.0)
        try:
            results = await asyncio.gather(*(client.sign(statuses(0, i), None) for i in range(5)))
            assert [r.der for r in results] == [b"unary\x00" + bytes([i]) for i in range(5)]
            assert (await client.sign(statuses(0, 9), None)).der == b"unary\x00\x09"
            assert stand.signs == 6
            assert client.batch_calls == 1  # asked once; unary from then on
        finally:
            await client.close()
            await server.stop(None)

    with caplog.at_level("WARNING", logger="frontend.signer_client"):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if "SignBatch" in r.getMessage()]
    assert len(lines) == 1 and "UNIMPLEMENTED" in lines[0]


def test_signer_with_a_lower_max_batch_gets_shorter_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        stand = BatchStand(max_batch=4)
        stand.gate = asyncio.Event()
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 5.0)
        try:
            first = asyncio.ensure_future(client.sign(statuses(0, 99), None))
            await stand.arrived.wait()
            rest = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(10)]
            await queued(client, 10)
            stand.gate.set()
            results = await asyncio.gather(first, *rest)
            assert [r.der for r in results[1:]] == [b"a\x00" + bytes([i]) for i in range(10)]
            assert stand.batches == [1, 4, 4, 2] and client.max_batch == 4
        finally:
            await client.close()
            await server.stop(None)

    with caplog.at_level("WARNING", logger="frontend.signer_client"):
        asyncio.run(go())
    assert any("at most 4 requests per SignBatch" in r.getMessage() for r in caplog.records)


def test_timeout_counts_per_request_from_its_arrival(tmp_path: Path) -> None:
    """A signer that never answers: the request in flight and the one queued behind it both end tryLater
    within signer.timeout of their own sign(), not one timeout after another."""

    async def go() -> None:
        stand = BatchStand()
        stand.gate = asyncio.Event()  # never set: every call hangs (a second call, sent with what is left
        stand.gate_every = True  # of the queued request's timeout, would otherwise be answered at once)
        address = f"unix:{tmp_path}/s.sock"
        server = await start(address, stand)
        client = SignerClient([address], 0.5)
        loop = asyncio.get_running_loop()
        try:
            began = loop.time()
            first = asyncio.ensure_future(client.sign(statuses(0, 1), None))
            await stand.arrived.wait()
            second = asyncio.ensure_future(client.sign(statuses(0, 2), None))
            await queued(client, 1)
            results = await asyncio.gather(first, second, return_exceptions=True)
            elapsed = loop.time() - began
            assert all(isinstance(r, TryLater) for r in results), results
            assert "DEADLINE_EXCEEDED" in str(results[0]) and "DEADLINE_EXCEEDED" in str(results[1])
            assert elapsed < 0.5 + 0.4  # both within (about) one timeout
            assert stand.batches in ([1], [1, 1])
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())
