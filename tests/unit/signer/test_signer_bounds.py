"""What a caller may make the signer hold (issue 7 item 4), against the real grpc.aio server in this
process (FakeToken; signer.service.serve as a start runs it):

- the receive limit is sized from policy.max_cert_ids and policy.max_batch: the largest valid SignRequest
  is signed, a message one byte over the limit is refused RESOURCE_EXHAUSTED before the servicer sees
  it (the largest SignBatch: tests/unit/signer/test_signer_batch.py);
- fields proto/signer.proto does not define are refused (INVALID_ARGUMENT naming the field), at any
  depth and on every Signer RPC, so padding cannot ride along with a valid request;
- unary calls in progress are bounded (RESOURCE_EXHAUSTED, which the frontend's client turns into
  tryLater), Watch streams have a cap of their own that never takes the unary calls' share, calls per
  connection and connections are bounded;
- the [listen] keys reach gRPC as the server options they name.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from frontend.signer_client import SignerClient
from shared.clock import FakeClock
from shared.config import ConfigError
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, SingleStatus
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.config import ListenLimits, load_signer_config
from signer.mechanisms import SignatureAlgorithm
from signer.policy import MAX_NONCE, MAX_REQUEST_ID, largest_sign_request
from signer.service import (
    MIN_ADMIN_MESSAGE_BYTES,
    maximum_concurrent_rpcs,
    receive_limit,
    serve,
    server_options,
)
from tests.unit.signer.signer_fixtures import (
    AUDIT_LABEL,
    DAY,
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

SIGN = "/ocsp.signer.v1.Signer/Sign"


def setup(base: Path, cas: list[Ca], *, listen: str = "", policy: str = "", admin: str = "") -> Path:
    conf = write_setup(base, cas)
    text = conf.read_text().replace("[listen]\n", f"[listen]\n{listen}").replace("[policy]\n", f"[policy]\n{policy}")
    conf.write_text(text + admin)
    return conf


def run(conf: Path, token: FakeToken, scenario: Any) -> None:
    """``scenario(address)`` against a signer serving ``conf``."""
    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        try:
            await scenario(address)
        finally:
            await server.stop(None)

    asyncio.run(main())


def raw_sign(channel: grpc.aio.Channel) -> Any:
    """Sign taking the request as bytes, exactly as given (no serializer)."""
    return channel.unary_unary(SIGN, request_serializer=None, response_deserializer=pb.SignReply.FromString)


def padded(message: bytes, total: int, field: int = 15) -> bytes:
    """``message`` with a length-delimited field ``field`` appended so that it is ``total`` bytes long."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    tag = varint(field << 3 | 2)
    for length_size in range(1, 6):
        content = total - len(message) - len(tag) - length_size
        if content >= 0 and len(varint(content)) == length_size:
            return message + tag + varint(content) + b"\0" * content
    raise AssertionError(f"cannot pad {len(message)} bytes to {total}")


def maximal_request(ca: Ca, n: int) -> pb.SignRequest:
    """A SignRequest policy accepts with every field at its longest: SHA-512 CertIDs with serials of 21
    octets (20 of value), revoked with reason and invalidity date, a 128-octet nonce in a long-form
    OCTET STRING, a request_id of MAX_REQUEST_ID four-byte characters."""
    base = ca.cert_id(1, hashes.SHA512())
    items = []
    for i in range(n):
        cid = pb.CertId(hash_algorithm=pb.SHA512, issuer_name_hash=base.issuer_name_hash,
                        issuer_key_hash=base.issuer_key_hash, serial_number=b"\x00\xff" + i.to_bytes(19, "big"))
        items.append(status(cid, pb.REVOKED, revocation_time=T - DAY, revocation_reason=10,
                            invalidity_date=T - 2 * DAY, this_update=T - HOUR, next_update=T + 6 * DAY))
    nonce = b"\x04\x81\x80" + os.urandom(MAX_NONCE)
    return pb.SignRequest(request_id="\U0010ffff" * MAX_REQUEST_ID, responses=items, nonce=nonce)


# -- the receive limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_cert_ids", [1, 8, 1000])
def test_largest_valid_request_signed_one_byte_more_refused(tmp_path: Path, max_cert_ids: int) -> None:
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca], policy=f"max_cert_ids = {max_cert_ids}\nmax_batch = 1\n")
    token = token_for(ca)
    limit = receive_limit(load_signer_config(conf))
    request = maximal_request(ca, max_cert_ids)
    # Ours differs from the computed largest only by the times (now, not year 9999: shorter varints).
    assert largest_sign_request(max_cert_ids).ByteSize() - 5 * 4 * max_cert_ids <= request.ByteSize()
    assert request.ByteSize() <= largest_sign_request(max_cert_ids).ByteSize() < limit

    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await pb_grpc.SignerStub(channel).Sign(request)
            resp = ocsp.load_der_ocsp_response(reply.ocsp_response)
            verify_signature(resp, ca.responder_cert)
            assert len(list(resp.responses)) == max_cert_ids
            sign = raw_sign(channel)
            data = request.SerializeToString()
            # At the limit the servicer sees it (and refuses the padding); one byte more, gRPC refuses it.
            await expect_error(sign(padded(data, limit)), grpc.StatusCode.INVALID_ARGUMENT, "unknown field 15")
            details = await expect_error(sign(padded(data, limit + 1)), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "larger than max" in details
            assert (await pb_grpc.SignerStub(channel).Health(pb.HealthRequest())).serving

    run(conf, token, scenario)
    assert len(token.signed) == 1


def test_receive_limit_follows_max_cert_ids_and_admin(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    base = short_dir(tmp_path)
    limits = {}
    for n in (1, 8, 64, 1000):
        limits[n] = receive_limit(load_signer_config(setup(base, [ca], policy=f"max_cert_ids = {n}\nmax_batch = 1\n")))
    assert limits[1] < limits[8] < limits[64] < limits[1000]
    assert limits[8] < 8 << 10  # one request at a time: a few KB, not the 1 MiB the flood used
    assert limits[1000] < 300 << 10
    # The default: a SignBatch of 64 requests of up to 8 CertIDs, a few hundred KB.
    default = receive_limit(load_signer_config(setup(base, [ca])))
    assert 60 * (limits[8] - 1024) < default < 300 << 10
    cfg = load_signer_config(setup(base, [ca], policy="max_batch = 1\n",
                                   admin='[admin]\nallowed_clients = ["cn:ocsp-admin"]\n'))
    assert receive_limit(cfg) == MIN_ADMIN_MESSAGE_BYTES  # a RotateRequest's certificate fits
    assert dict(server_options(cfg))["grpc.max_receive_message_length"] == MIN_ADMIN_MESSAGE_BYTES


# -- unknown fields ----------------------------------------------------------------------------------


def test_unknown_fields_refused_at_any_depth(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca])
    token = token_for(ca)
    good = pb.SignRequest(request_id="r1", responses=[status(ca.cert_id(7))])
    cert_id = good.responses[0].cert_id.SerializeToString() + b"\xa0\x06\x01"  # field 100, varint 1
    single = pb.SingleStatus.FromString(good.responses[0].SerializeToString())
    single.ClearField("cert_id")
    nested = single.SerializeToString() + b"\x0a" + bytes([len(cert_id)]) + cert_id
    deep = pb.SignRequest(request_id="r1").SerializeToString() + b"\x12" + bytes([len(nested)]) + nested

    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            sign = raw_sign(channel)
            await sign(good.SerializeToString())  # signed
            await expect_error(sign(good.SerializeToString() + b"\x7a\x03abc"), grpc.StatusCode.INVALID_ARGUMENT,
                               "unknown field 15 of SignRequest")
            await expect_error(sign(deep), grpc.StatusCode.INVALID_ARGUMENT,
                               "unknown field 100 in responses[0].cert_id")
            for method, reply in (("Health", pb.HealthReply), ("Responders", pb.RespondersReply)):
                call = channel.unary_unary(f"/ocsp.signer.v1.Signer/{method}", request_serializer=None,
                                           response_deserializer=reply.FromString)
                await expect_error(call(b"\x0a\x01x"), grpc.StatusCode.INVALID_ARGUMENT, "unknown field 1")
            watch = channel.unary_stream("/ocsp.signer.v1.Signer/Watch", request_serializer=None,
                                         response_deserializer=pb.ResponderState.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in watch(b"\x0a\x01x"):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert "unknown field 1" in (info.value.details() or "")

    run(conf, token, scenario)
    assert len(token.signed) == 1  # only the request without unknown fields


# -- calls, streams, connections -----------------------------------------------------------------------


@dataclass
class GatedToken(FakeToken):
    """Responder signatures wait for ``gate`` once it is set up; ``entered`` says one is waiting."""

    gate: threading.Event | None = None
    entered: threading.Event | None = None

    def sign(self, key_label: str, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        if self.gate is not None and key_label != AUDIT_LABEL:
            assert self.entered is not None
            self.entered.set()
            self.gate.wait(30)
        return super().sign(key_label, algorithm, data)


def gated(ca: Ca) -> GatedToken:
    t = token_for(ca)
    return GatedToken(t.keys)


async def blocked_sign(token: GatedToken, stub: pb_grpc.SignerStub, ca: Ca) -> asyncio.Future[Any]:
    """A Sign that stays in progress (in the token) until ``token.gate`` is set."""
    token.entered, token.gate = threading.Event(), threading.Event()
    call = asyncio.ensure_future(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]), timeout=30))
    await asyncio.get_running_loop().run_in_executor(None, token.entered.wait, 30)
    assert token.entered.is_set()
    return call


async def first_state(stub: pb_grpc.SignerStub) -> tuple[Any, pb.ResponderState]:
    stream = stub.Watch(pb.WatchRequest())
    return stream, await stream.read()


def test_calls_in_progress_bounded_watch_apart(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca], listen="max_concurrent_rpcs = 1\nmax_watchers = 1\n")
    token = gated(ca)

    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SignerStub(channel)
            watch, state = await first_state(stub)  # the one Watch stream: not counted as a call
            assert state.generation == 1
            await stub.Health(pb.HealthRequest())  # the unary share is free
            held = await blocked_sign(token, stub, ca)
            await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(2))])),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit")
            await expect_error(stub.Health(pb.HealthRequest()), grpc.StatusCode.RESOURCE_EXHAUSTED)
            # The frontend's client gets tryLater for it (and would try another signer first).
            client = SignerClient([address], timeout=5)
            try:
                cid = ca.cert_id(3)
                one = SingleStatus(CertId(HashAlgorithm.SHA1, bytes(cid.issuer_name_hash), bytes(cid.issuer_key_hash),
                                          bytes(cid.serial_number)), CertStatus.GOOD, NOW - timedelta(hours=1),
                                   NOW + timedelta(days=1))
                with pytest.raises(TryLater, match="RESOURCE_EXHAUSTED"):
                    await client.sign([one], None)
                assert client.retries == 0  # not mistaken for a lost connection
            finally:
                await client.close()
            assert token.gate is not None
            token.gate.set()
            await held
            await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(4))]))  # slots come back
            watch.cancel()

    run(conf, token, scenario)
    assert len(token.signed) == 2


def test_watch_streams_capped_first_ones_kept(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca], listen="max_concurrent_rpcs = 1\nmax_watchers = 2\n")
    token = token_for(ca)

    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SignerStub(channel)
            kept = [await first_state(stub) for _ in range(2)]
            extra = stub.Watch(pb.WatchRequest())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await extra.read()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_watchers" in (info.value.details() or "")
            # Watch streams at their cap leave the unary share alone.
            await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]))
            # The first ones still follow changes (a state pushed by the holder reaches both).
            holder = service_of[0].state
            holder._notify()
            for stream, _ in kept:
                assert (await stream.read()).generation == 1
            assert holder.watchers == 2 and holder.watchers_refused == 1
            for stream, _ in kept:
                stream.cancel()
            # A closed stream frees its place.
            await wait_for(lambda: holder.watchers == 0)
            again, state = await first_state(stub)
            assert state.generation == 1
            again.cancel()

    service_of: list[Any] = []

    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        service_of.append(server.service)
        try:
            await scenario(address)
        finally:
            await server.stop(None)

    asyncio.run(main())


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_calls_per_connection_bounded(tmp_path: Path) -> None:
    """max_concurrent_streams: a second call on a connection whose one stream is busy waits in the
    client; another connection is served meanwhile."""
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca], listen="max_concurrent_streams = 1\n")
    token = gated(ca)

    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as one, \
                grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as two:
            stub = pb_grpc.SignerStub(one)
            await stub.Health(pb.HealthRequest())
            held = await blocked_sign(token, stub, ca)
            waiting = asyncio.ensure_future(stub.Health(pb.HealthRequest(), timeout=30))
            assert (await pb_grpc.SignerStub(two).Health(pb.HealthRequest(), timeout=10)).serving
            assert not waiting.done()  # still queued behind the held stream of its connection
            assert token.gate is not None
            token.gate.set()
            await held
            assert (await waiting).serving

    run(conf, token, scenario)


def test_connections_bounded(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = setup(short_dir(tmp_path), [ca], listen="max_connections = 1\n")

    async def scenario(address: str) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(address, options=opts) as one, \
                grpc.aio.insecure_channel(address, options=opts) as two:
            assert (await pb_grpc.SignerStub(one).Health(pb.HealthRequest(), timeout=10)).serving
            await expect_error(pb_grpc.SignerStub(two).Health(pb.HealthRequest(), timeout=10),
                               grpc.StatusCode.UNAVAILABLE)
            assert (await pb_grpc.SignerStub(one).Health(pb.HealthRequest(), timeout=10)).serving

    run(conf, token_for(ca), scenario)


# -- config ----------------------------------------------------------------------------------------


def test_limits_reach_grpc(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    base = short_dir(tmp_path)
    default = load_signer_config(setup(base, [ca]))
    assert default.listen.limits == ListenLimits()
    cfg = load_signer_config(setup(base, [ca], listen=(
        "max_concurrent_rpcs = 100\nmax_watchers = 10\nmax_concurrent_streams = 20\nmax_connections = 30\n"
        'max_connection_age = "5m"\nmax_connection_age_grace = "20s"\n')))
    options = dict(server_options(cfg))
    assert options["grpc.max_concurrent_streams"] == 20
    assert options["grpc.max_allowed_incoming_connections"] == 30
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 20_000
    assert maximum_concurrent_rpcs(cfg) == 110
    defaults = dict(server_options(default))
    assert defaults["grpc.max_connection_age_ms"] == 3_600_000
    assert defaults["grpc.max_connection_age_grace_ms"] == 30_000


@pytest.mark.parametrize("line,key", [
    ("max_concurrent_rpcs = 0", "listen.max_concurrent_rpcs"),
    ("max_watchers = 0", "listen.max_watchers"),
    ("max_concurrent_streams = -1", "listen.max_concurrent_streams"),
    ("max_connections = \"many\"", "listen.max_connections"),
    ('max_connection_age = "0s"', "listen.max_connection_age"),
    ('max_connection_age_grace = "2h"', "listen.max_connection_age_grace"),
])
def test_bad_limits_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    conf = setup(short_dir(tmp_path), [make_ca("alpha")], listen=line + "\n")
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert info.value.key == key, info.value


def test_example_config_states_the_defaults() -> None:
    """etc/signer.toml shows each bound with its default value (its comments size them)."""
    import tomllib

    from shared.config import parse_duration
    from signer.config import DEFAULT_MIN_FREE, DEFAULT_SPACE_CHECK_INTERVAL, parse_size

    example = tomllib.loads((Path(__file__).resolve().parents[3] / "etc" / "signer.toml").read_text())
    listen, d = example["listen"], ListenLimits()
    for key in ("max_concurrent_rpcs", "max_watchers", "max_concurrent_streams", "max_connections"):
        assert listen[key] == getattr(d, key), key
    for key in ("max_connection_age", "max_connection_age_grace"):
        assert parse_duration(listen[key]) == getattr(d, key), key
    assert parse_size(example["audit"]["min_free"]) == DEFAULT_MIN_FREE
    assert parse_duration(example["audit"]["space_check_interval"]) == DEFAULT_SPACE_CHECK_INTERVAL
