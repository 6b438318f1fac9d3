"""frontend.signer_client's lanes: ``connections`` channels per signer address, each its own TCP
connection (counted by the server's ``context.peer()``), a batch on the least busy one, several batches
in flight per address at once; one connection behaving as one channel per address always did; and the
``[signer] connections`` key.

The servers are real grpc.aio servers on loopback TCP (a peer is ``ipv4:127.0.0.1:<client port>``, one
per connection); the servicer is a stand-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from frontend import signer_client
from frontend.config import DEFAULT_CONNECTIONS, MAX_CONNECTIONS, load_frontend_config
from frontend.signer_client import SignerClient
from frontend.watch import ResponderWatch
from shared.config import ConfigError
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, SingleStatus
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from tests.unit.frontend.frontend_pki import TestCA
from tests.unit.frontend.test_frontend_config import setup as frontend_setup

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HELD = 9  # a request whose serial starts with this waits for Stand.release


def statuses(kind: int, n: int = 0) -> list[SingleStatus]:
    cid = CertId(HashAlgorithm.SHA256, b"n" * 32, b"k" * 32, bytes([kind, n]))
    return [SingleStatus(cid, CertStatus.GOOD, T0, T0 + timedelta(hours=1))]


class Stand(signer_pb2_grpc.SignerServicer):
    """Records the peer (the client's connection) of every call. A SignBatch waits for ``release``
    while ``hold_all``, or when it carries a HELD request; ``in_flight`` counts calls inside it."""

    def __init__(self, *, hold_all: bool = False, batch: bool = True) -> None:
        self.hold_all = hold_all
        self.batch = batch
        self.release = asyncio.Event()
        self.peers: list[str] = []  # per SignBatch (or Sign) call, in arrival order
        self.batches: list[int] = []  # requests per SignBatch call
        self.health_peers: list[str] = []
        self.in_flight = 0
        self.changed = asyncio.Condition()

    async def wait_in_flight(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.in_flight >= n)

    async def SignBatch(self, request: pb.SignBatchRequest, context: aio.ServicerContext) -> pb.SignBatchReply:
        if not self.batch:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.peers.append(context.peer())
        self.batches.append(len(request.requests))
        serials = [bytes(r.responses[0].cert_id.serial_number) for r in request.requests]
        async with self.changed:
            self.in_flight += 1
            self.changed.notify_all()
        try:
            if self.hold_all or any(s[0] == HELD for s in serials):
                await self.release.wait()
        finally:
            async with self.changed:
                self.in_flight -= 1
                self.changed.notify_all()
        return pb.SignBatchReply(items=[pb.SignBatchItem(reply=pb.SignReply(ocsp_response=b"DER" + s, generation=1))
                                        for s in serials])

    async def Sign(self, request: pb.SignRequest, context: aio.ServicerContext) -> pb.SignReply:
        self.peers.append(context.peer())
        return pb.SignReply(ocsp_response=b"unary" + request.responses[0].cert_id.serial_number)

    async def Health(self, request: pb.HealthRequest, context: aio.ServicerContext) -> pb.HealthReply:
        self.health_peers.append(context.peer())
        return pb.HealthReply(serving=True, detail="ok")


async def start(stand: Stand) -> tuple[aio.Server, str]:
    server = aio.server()
    signer_pb2_grpc.add_SignerServicer_to_server(stand, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def queued(client: SignerClient, n: int) -> None:
    """One pass of the loop (each new sign() task queues its request and waits), then ``n`` are queued."""
    await asyncio.sleep(0)  # a yield to the loop, not a wait for time
    assert len(client._queue) == n


async def connected(client: SignerClient) -> None:
    """Every lane's connection up (they connect at once; a lane still connecting is passed over)."""
    client.channels()
    await asyncio.wait_for(asyncio.gather(*(lane.channel.channel_ready() for lanes in client._lanes
                                            for lane in lanes)), 10)


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


# -- lanes --------------------------------------------------------------------------------------------


def test_several_batches_in_flight_at_once_over_distinct_connections() -> None:
    async def go() -> None:
        stand = Stand(hold_all=True)
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=3)
        await connected(client)
        try:
            first = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(3)]
            await stand.wait_in_flight(3)  # all three at the signer together: one per connection
            assert stand.batches == [1, 1, 1] and len(set(stand.peers)) == 3
            assert client.in_flight() == [[1, 1, 1]]
            # Every lane is busy: what comes now queues and goes out together once a lane is free.
            rest = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(3, 8)]
            await queued(client, 5)
            stand.release.set()
            results = await asyncio.gather(*first, *rest)
            assert [r.der for r in results] == [b"DER\x00" + bytes([i]) for i in range(8)]
            assert stand.batches == [1, 1, 1, 5] and stand.peers[3] in stand.peers[:3]
            assert client.in_flight() == [[0, 0, 0]] and client.batch_calls == 4
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_a_batch_goes_on_the_least_busy_connection() -> None:
    """One call held on one lane: the next ones all take the other lane (fewest in flight); with both
    idle, calls take the lanes in turn."""

    async def go() -> None:
        stand = Stand()
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=2)
        await connected(client)
        try:
            for i in range(4):  # idle lanes: each in turn, so both connections are up and used
                await client.sign(statuses(0, i), None)
            assert len(set(stand.peers)) == 2 and stand.peers[0] == stand.peers[2] != stand.peers[1]
            stand.peers.clear()
            held = asyncio.ensure_future(client.sign(statuses(HELD), None))
            await stand.wait_in_flight(1)
            for i in range(5):
                assert (await client.sign(statuses(0, i), None)).der == b"DER\x00" + bytes([i])
            busy, *others = stand.peers
            assert set(others) == {others[0]} and others[0] != busy
            assert sorted(client.in_flight()[0]) == [0, 1]
            stand.release.set()
            assert (await held).der == b"DER\x09\x00"
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_the_bound_per_connection_holds() -> None:
    """calls_per_address bounds each lane: 2 lanes x 2 calls = 4 in flight, the fifth waits."""

    async def go() -> None:
        stand = Stand(hold_all=True)
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=2, calls_per_address=2)
        await connected(client)
        try:
            calls = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(5)]
            await stand.wait_in_flight(4)
            assert client.in_flight() == [[2, 2]] and len(client._queue) == 1 and len(set(stand.peers)) == 2
            stand.release.set()
            await asyncio.gather(*calls)
            assert stand.batches == [1, 1, 1, 1, 1]
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_a_connected_lane_goes_before_one_that_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lane 1 cannot connect (as while a restarted signer has taken one lane back but not the other, or
    one connection was lost): calls take lane 0 while it has room, rather than every other one failing;
    past lane 0's bound the next call still goes on lane 1 (and gets tryLater there)."""
    make = signer_client.make_channel

    def one_lane_dead(address: str, *args: Any, lane: int = 0) -> aio.Channel:
        return make(f"unix:{tmp_path}/nobody.sock" if lane == 1 else address, *args, lane=lane)

    monkeypatch.setattr(signer_client, "make_channel", one_lane_dead)

    async def go() -> None:
        stand = Stand()
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=2)
        client.channels()
        await asyncio.wait_for(client._lanes[0][0].channel.channel_ready(), 10)
        try:
            for i in range(6):
                assert (await client.sign(statuses(0, i), None)).der == b"DER\x00" + bytes([i])
            assert len(stand.peers) == 6 and len(set(stand.peers)) == 1
            held = asyncio.ensure_future(client.sign(statuses(HELD), None))
            await stand.wait_in_flight(1)
            with pytest.raises(TryLater):  # lane 0 is at its bound: this one goes on lane 1
                await client.sign(statuses(0, 7), None)
            stand.release.set()
            assert (await held).der == b"DER\x09\x00"
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_one_connection_is_one_channel_per_address_as_before() -> None:
    async def go() -> None:
        stand = Stand(hold_all=True)
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=1)
        try:
            first = asyncio.ensure_future(client.sign(statuses(0, 0), None))
            await stand.wait_in_flight(1)
            rest = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(1, 5)]
            await queued(client, 4)  # one call in flight per address: the rest wait for it
            stand.release.set()
            await asyncio.gather(first, *rest)
            for i in range(3):
                await client.sign(statuses(0, i), None)
            assert stand.batches == [1, 4, 1, 1, 1] and len(set(stand.peers)) == 1
            assert [a for a, _ in client.channels()] == [address] and client.in_flight() == [[0]]
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_connections_stay_separate_without_the_local_subchannel_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Either guarantee alone keeps the lanes apart: here the lane argument, with the global pool."""
    options = signer_client.channel_options

    def global_pool(*args: Any) -> list[tuple[str, int]]:
        return [(k, v) for k, v in options(*args) if k != "grpc.use_local_subchannel_pool"]

    monkeypatch.setattr(signer_client, "channel_options", global_pool)

    async def go() -> None:
        stand = Stand(hold_all=True)
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=3)
        await connected(client)
        try:
            calls = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(3)]
            await stand.wait_in_flight(3)
            assert len(set(stand.peers)) == 3
            stand.release.set()
            await asyncio.gather(*calls)
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_channels_with_the_same_arguments_would_share_a_connection() -> None:
    """The control: what the lanes guard against. Two channels with identical arguments and gRPC's
    global subchannel pool reach the server over one connection."""

    async def go() -> None:
        stand = Stand()
        server, address = await start(stand)
        channels = [aio.insecure_channel(address) for _ in range(2)]
        try:
            for ch in channels:
                await signer_pb2_grpc.SignerStub(ch).Health(pb.HealthRequest(), timeout=5)
            assert len(stand.health_peers) == 2 and len(set(stand.health_peers)) == 1
        finally:
            for ch in channels:
                await ch.close()
            await server.stop(None)

    run(go)


# -- what stays per address ---------------------------------------------------------------------------


def test_failover_between_addresses_with_several_connections(tmp_path: Path) -> None:
    async def go() -> None:
        stand = Stand()
        server, live = await start(stand)
        client = SignerClient([f"unix:{tmp_path}/dead.sock", live], 2.0, connections=2)
        try:
            results = await asyncio.gather(*(client.sign(statuses(0, i), None) for i in range(6)))
            assert all(r.signer == live for r in results)
            assert client.in_flight() == [[0, 0], [0, 0]]
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_older_signer_is_told_once_though_several_lanes_learn_it(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        stand = Stand(batch=False)
        server, address = await start(stand)
        client = SignerClient([address], 5.0, connections=3)
        try:
            results = await asyncio.gather(*(client.sign(statuses(0, i), None) for i in range(3)))
            assert [r.der for r in results] == [b"unary\x00" + bytes([i]) for i in range(3)]
            assert client.batch_calls == 3  # one SignBatch per lane in flight at once
            assert (await client.sign(statuses(0, 7), None)).der == b"unary\x00\x07" and client.batch_calls == 3
        finally:
            await client.close()
            await server.stop(None)

    with caplog.at_level("WARNING", logger="frontend.signer_client"):
        run(go)
    assert len([r for r in caplog.records if "has no SignBatch" in r.getMessage()]) == 1


def test_health_and_watch_use_the_first_connection_of_each_address() -> None:
    async def go() -> None:
        stands = [Stand(), Stand()]
        started = [await start(s) for s in stands]
        addresses = [a for _, a in started]
        client = SignerClient(addresses, 5.0, connections=3)
        try:
            pairs = client.channels()
            assert [a for a, _ in pairs] == addresses
            assert [ch for _, ch in pairs] == [lanes[0].channel for lanes in client._lanes]
            ResponderWatch(pairs, None, [])  # type: ignore[arg-type]  # takes (address, channel) pairs
            for _ in range(3):
                health = await client.health()
                assert [(h.address, h.serving) for h in health] == [(a, True) for a in addresses]
            for s in stands:
                assert len(s.health_peers) == 3 and len(set(s.health_peers)) == 1
        finally:
            await client.close()
            for server, _ in started:
                await server.stop(None)

    run(go)


def test_closing_closes_every_channel() -> None:
    async def go() -> None:
        stand = Stand(hold_all=True)
        server, address = await start(stand)
        client = SignerClient([address, address], 5.0, connections=3)
        await connected(client)
        try:
            waiting = [asyncio.ensure_future(client.sign(statuses(0, i), None)) for i in range(8)]
            await stand.wait_in_flight(6)
            channels = [lane.channel for lanes in client._lanes for lane in lanes]
            assert len(set(map(id, channels))) == 6
            await client.close()
            assert all(ch.get_state() == grpc.ChannelConnectivity.SHUTDOWN for ch in channels)
            results = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(r, TryLater) for r in results), results
        finally:
            await client.close()
            await server.stop(None)

    run(go)


def test_connections_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="connections"):
        SignerClient(["127.0.0.1:1"], 1.0, connections=0)


# -- [signer] connections -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Connections CA")


def test_connections_key(tmp_path: Path, ca: TestCA) -> None:
    assert DEFAULT_CONNECTIONS == 2 and MAX_CONNECTIONS == 64
    (tmp_path / "d").mkdir()
    assert load_frontend_config(frontend_setup(tmp_path / "d", ca)).signer.connections == DEFAULT_CONNECTIONS
    for value in (1, 5, 64):
        (tmp_path / f"ok{value}").mkdir()
        conf = frontend_setup(tmp_path / f"ok{value}", ca, f"[signer]\nconnections = {value}\n")
        assert load_frontend_config(conf).signer.connections == value


@pytest.mark.parametrize("value,words", [("0", "at least 1"), ("65", "at most 64"), ('"2"', "an integer"),
                                         ("2.5", "an integer"), ("true", "an integer")])
def test_bad_connections_name_the_file_and_key(tmp_path: Path, ca: TestCA, value: str, words: str) -> None:
    conf = frontend_setup(tmp_path, ca, f"[signer]\nconnections = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_frontend_config(conf)
    assert info.value.file == str(conf) and info.value.key == "signer.connections"
    assert words in info.value.message
    assert str(info.value).startswith(f"{conf}: signer.connections: ")
