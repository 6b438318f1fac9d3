"""SignBatch against the real grpc.aio server in this process (FakeToken): each request is judged on its
own exactly as a unary Sign judges it (a refused item fails alone, with Sign's code and message), the
accepted ones are signed in one hop to the token thread, their audit records go as one group before
the reply leaves, and an audit failure fails every item of the group (fail closed). The batch is
bounded by [policy] max_batch, and the receive limit admits the largest valid batch and no more."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.x509 import ocsp

from shared.clock import FakeClock
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from shared.rpc.metadata import MAX_BATCH
from signer.audit import AuditRecord, AuditUnavailable, RefusalRecord, show
from signer.config import load_signer_config
from signer.service import SignerServer, receive_limit, serve
from tests.unit.signer.signer_fixtures import (
    HOUR,
    NOW,
    Ca,
    FakeToken,
    T,
    expect_error,
    make_ca,
    short_dir,
    status,
    token_for,
    verify_signature,
    write_setup,
)
from tests.unit.signer.test_signer_bounds import maximal_request, padded
from tests.unit.signer.test_signer_verify_status import INDEX, ISSUED, REVOKED

SIGN_BATCH = "/ocsp.signer.v1.Signer/SignBatch"


class CountingExecutor(ThreadPoolExecutor):
    """The token thread, counting the hops to it by the function sent."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="pkcs11")
        self.hops: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.hops.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


Scenario = Callable[[pb_grpc.SignerStub, grpc.aio.Channel, SignerServer], Awaitable[None]]


def run(conf: Path, token: FakeToken, scenario: Scenario) -> None:
    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await scenario(pb_grpc.SignerStub(channel), channel, server)
        finally:
            await server.stop(None)

    asyncio.run(main())


def setup(tmp_path: Path, policy: str = "") -> tuple[Path, Ca, FakeToken]:
    ca = make_ca("alpha")
    conf = write_setup(short_dir(tmp_path), [ca])
    conf.write_text(conf.read_text().replace("[policy]\n", f"[policy]\n{policy}"))
    (conf.parent / "ca.d" / "index.txt").write_text(INDEX)
    return conf, ca, token_for(ca)


def now_window(cert_id: pb.CertId, st: int = pb.GOOD) -> pb.SingleStatus:
    return status(cert_id, st, this_update=T, next_update=T + HOUR)


def with_unknown_field(request: pb.SignRequest) -> pb.SignRequest:
    return pb.SignRequest.FromString(request.SerializeToString() + b"\x7a\x03abc")  # field 15


def test_mixed_batch_each_item_as_sign_would(tmp_path: Path) -> None:
    conf, ca, token = setup(tmp_path)
    stranger = make_ca("stranger")
    requests = [
        pb.SignRequest(request_id="good", responses=[now_window(ca.cert_id(ISSUED))], nonce=b"\x04\x02ab"),
        pb.SignRequest(request_id="policy", responses=[status(ca.cert_id(ISSUED), this_update=T,
                                                              next_update=T - 1)]),
        pb.SignRequest(request_id="status", responses=[now_window(ca.cert_id(REVOKED))]),  # good for a revoked
        pb.SignRequest(request_id="stranger", responses=[now_window(stranger.cert_id(ISSUED))]),
        with_unknown_field(pb.SignRequest(request_id="unknown", responses=[now_window(ca.cert_id(ISSUED))])),
        pb.SignRequest(request_id="good2", responses=[now_window(ca.cert_id(0x99), pb.UNKNOWN)]),
    ]
    expected = [None, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT, None]

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        reply = await stub.SignBatch(pb.SignBatchRequest(requests=requests))
        assert len(reply.items) == len(requests)
        assert len(token.signed) == 2  # only the two accepted ones reached the token
        for request, item, code in zip(requests, reply.items, expected):
            if code is None:
                assert item.WhichOneof("result") == "reply", item
                resp = ocsp.load_der_ocsp_response(item.reply.ocsp_response)
                verify_signature(resp, ca.responder_cert)
                assert item.reply.generation and item.reply.responder_fingerprint
                continue
            assert item.WhichOneof("result") == "error", item
            assert item.error.code == code.value[0] and item.error.refused
            # Exactly what a unary Sign of the same request fails with.
            details = await expect_error(stub.Sign(request), code)
            assert item.error.message == details
        resp = ocsp.load_der_ocsp_response(reply.items[0].reply.ocsp_response)
        assert resp.serial_number == ISSUED and resp.certificate_status == ocsp.OCSPCertStatus.GOOD

    run(conf, token, scenario)
    records = [r.record for r in show(sorted((conf.parent / "audit").glob("*.jsonl")))]
    signed = [r.request_id for r in records if isinstance(r, AuditRecord)]
    refused = [r.request_id for r in records if isinstance(r, RefusalRecord)]
    assert signed == ["good", "good2"]
    assert refused == ["status", "status"]  # the batch's refusal, then the unary Sign's


def test_one_token_hop_and_one_audit_group_per_batch(tmp_path: Path) -> None:
    conf, ca, token = setup(tmp_path)
    executor = CountingExecutor()

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        server.service.executor = executor
        commits = server.service.audit.commits
        requests = [pb.SignRequest(request_id=f"r{i}", responses=[now_window(ca.cert_id(ISSUED))],
                                   nonce=b"\x04\x01" + bytes([i])) for i in range(10)]
        reply = await stub.SignBatch(pb.SignBatchRequest(requests=requests))
        assert all(item.WhichOneof("result") == "reply" for item in reply.items)
        assert len(token.signed) == 10
        assert executor.hops == ["_sign_all"]  # ten signatures, one hop to the token thread
        assert server.service.audit.commits == commits + 1  # ten records, one write+fsync
        # The unary Sign is a batch of one: one hop as well.
        await stub.Sign(requests[0])
        assert executor.hops == ["_sign_all", "_sign_all"]

    try:
        run(conf, token, scenario)
    finally:
        executor.shutdown()
    assert token.threads == {"pkcs11_0"}


@pytest.mark.parametrize("failing", [0, 2])
def test_audit_failure_fails_every_item_of_the_group(tmp_path: Path, failing: int) -> None:
    conf, ca, token = setup(tmp_path)

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        audit = server.service.audit
        real = audit.append
        calls: list[Any] = []

        async def append(record: Any) -> None:
            calls.append(record)
            if len(calls) - 1 == failing:
                raise AuditUnavailable("disk on fire")
            await real(record)

        audit.append = append  # type: ignore[method-assign]
        requests = [pb.SignRequest(request_id=f"r{i}", responses=[now_window(ca.cert_id(ISSUED))])
                    for i in range(3)]
        requests.append(pb.SignRequest(request_id="lie", responses=[now_window(ca.cert_id(REVOKED))]))
        requests.append(pb.SignRequest(request_id="policy", responses=[]))
        reply = await stub.SignBatch(pb.SignBatchRequest(requests=requests))
        assert len(calls) == 4  # three signatures and one refusal, appended together
        for item in reply.items[:4]:
            assert item.WhichOneof("result") == "error"
            assert item.error.code == grpc.StatusCode.UNAVAILABLE.value[0], item
            assert "audit log not writable: disk on fire" in item.error.message
        assert reply.items[4].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # needed no record
        audit.append = real  # type: ignore[method-assign]
        again = await stub.SignBatch(pb.SignBatchRequest(requests=requests[:3]))
        assert all(item.WhichOneof("result") == "reply" for item in again.items)

    run(conf, token, scenario)


def test_batch_bound(tmp_path: Path) -> None:
    conf, ca, token = setup(tmp_path, "max_batch = 3\n")
    request = pb.SignRequest(request_id="r", responses=[now_window(ca.cert_id(ISSUED))])

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        reply = await stub.SignBatch(pb.SignBatchRequest(requests=[request] * 3))
        assert [item.WhichOneof("result") for item in reply.items] == ["reply"] * 3
        call = stub.SignBatch(pb.SignBatchRequest(requests=[request] * 4))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4 entries; 1..3 allowed" in (info.value.details() or "")
        assert dict(info.value.trailing_metadata() or ())[MAX_BATCH] == "3"
        await expect_error(stub.SignBatch(pb.SignBatchRequest()), grpc.StatusCode.INVALID_ARGUMENT, "0 entries")
        raw = channel.unary_unary(SIGN_BATCH, request_serializer=None,
                                  response_deserializer=pb.SignBatchReply.FromString)
        data = pb.SignBatchRequest(requests=[request]).SerializeToString()
        await expect_error(raw(data + b"\x7a\x03abc"), grpc.StatusCode.INVALID_ARGUMENT,
                           "unknown field 15 of SignBatchRequest")
        assert len(token.signed) == 3

    run(conf, token, scenario)


def test_receive_limit_admits_the_largest_batch_and_no_more(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(short_dir(tmp_path), [ca])
    conf.write_text(conf.read_text().replace("[policy]\n", "[policy]\nmax_batch = 5\nmax_cert_ids = 20\n"))
    token = token_for(ca)
    limit = receive_limit(load_signer_config(conf))
    batch = pb.SignBatchRequest(requests=[maximal_request(ca, 20) for _ in range(5)])
    assert batch.ByteSize() < limit < 2 * batch.ByteSize()

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        reply = await stub.SignBatch(batch)
        assert [item.WhichOneof("result") for item in reply.items] == ["reply"] * 5
        raw = channel.unary_unary(SIGN_BATCH, request_serializer=None,
                                  response_deserializer=pb.SignBatchReply.FromString)
        data = batch.SerializeToString()
        await expect_error(raw(padded(data, limit)), grpc.StatusCode.INVALID_ARGUMENT, "unknown field 15")
        details = await expect_error(raw(padded(data, limit + 1)), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "larger than max" in details

    run(conf, token, scenario)
    assert len(token.signed) == 5


class GatedToken(FakeToken):
    """Once ``armed``: signs only once ``gate`` is set (on the token thread); ``entered`` is set at the
    first signature."""

    def __init__(self, base: FakeToken) -> None:
        super().__init__(base.keys)
        import threading

        self.entered = threading.Event()
        self.gate = threading.Event()
        self.armed = False  # not the start's probe signatures

    def sign(self, key_label: str, algorithm: Any, data: bytes) -> bytes:
        if self.armed and key_label != "audit-key":
            self.entered.set()
            assert self.gate.wait(30)
        return super().sign(key_label, algorithm, data)


def test_signatures_in_flight_are_bounded(tmp_path: Path) -> None:
    """[listen] max_signatures_in_flight = 3: with 3 signatures waiting on the token, a batch of 2 more
    fails RESOURCE_EXHAUSTED at once, marked as the signer's refusal, without reaching the token; once
    they are answered, requests are signed again."""
    conf, ca, base = setup(tmp_path)
    conf.write_text(conf.read_text().replace("[listen]\n", "[listen]\nmax_signatures_in_flight = 3\n"))
    token = GatedToken(base)
    request = pb.SignRequest(request_id="r", responses=[now_window(ca.cert_id(ISSUED))])

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        loop = asyncio.get_running_loop()
        token.armed = True
        first = stub.SignBatch(pb.SignBatchRequest(requests=[request] * 3))
        waiting = loop.create_task(_await(first))
        assert await loop.run_in_executor(None, token.entered.wait, 30)
        assert server.service.in_flight == 3
        over = await stub.SignBatch(pb.SignBatchRequest(requests=[request] * 2))
        for item in over.items:
            assert item.WhichOneof("result") == "error"
            assert item.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and item.error.refused
            assert "max_signatures_in_flight" in item.error.message
        await expect_error(stub.Sign(request), grpc.StatusCode.RESOURCE_EXHAUSTED, "signatures in flight")
        assert server.service.overloaded == 3
        token.gate.set()
        reply = await waiting
        assert [i.WhichOneof("result") for i in reply.items] == ["reply"] * 3
        assert server.service.in_flight == 0
        assert (await stub.Sign(request)).ocsp_response

    run(conf, token, scenario)
    assert len(token.signed) == 4  # the refused ones never reached the token


async def _await(call: Any) -> Any:
    return await call
