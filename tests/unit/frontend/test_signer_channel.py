"""The frontend's channel to the signer: keepalive settings both halves agree on, and a Sign whose
connection went away under it being sent once more (frontend.signer_client, signer.service).

The gRPC servers here are real grpc.aio servers in-process, with the signer's real server options; the
servicer is a stand-in (unit tests), the integration tests use the real processes
(tests/integration/test_signer_channel.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc import aio

from frontend.config import load_frontend_config
from frontend.signer_client import (
    CHANNEL_OPTIONS,
    SIGNER_DEFAULT_MIN_PING_INTERVAL,
    Keepalive,
    SignerClient,
    channel_options,
    keepalive_warning,
)
from shared.config import ConfigError
from shared.ocsp.errors import TryLater
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from shared.rpc.metadata import REFUSED
from signer.config import (
    DEFAULT_MIN_PING_INTERVAL,
    AdminConfig,
    ListenConfig,
    PolicyConfig,
    load_signer_config,
)
from signer.service import server_options
from tests.unit.frontend.test_frontend_config import setup as frontend_setup
from tests.unit.frontend.test_frontend_signer_client import statuses
from tests.unit.signer.signer_fixtures import (
    expect_error,
    make_ca,
    run_server,
    short_dir,
    status,
    token_for,
    write_setup,
)


def options_for(min_ping_interval: float) -> list[tuple[str, int]]:
    listen = ListenConfig(address="127.0.0.1:0", kind="tcp", min_ping_interval=timedelta(seconds=min_ping_interval))
    config = SimpleNamespace(listen=listen, policy=PolicyConfig(), admin=AdminConfig())
    return server_options(config)  # type: ignore[arg-type]


class Stand(signer_pb2_grpc.SignerServicer):
    """Sign: the first call waits until its connection is gone (it never answers); later ones answer.
    ``refuse``: abort every call as the real signer refuses (UNAVAILABLE, with the refusal mark) or, with
    ``mark=False``, as an older signer did (no mark)."""

    def __init__(self, *, hang_first: bool = False, refuse: bool = False, mark: bool = True,
                 batch: bool = True) -> None:
        self.hang_first = hang_first
        self.refuse = refuse
        self.mark = mark
        self.batch = batch  # False: a signer without SignBatch (UNIMPLEMENTED; the client sends Signs)
        self.calls = 0

    async def Sign(self, request: pb.SignRequest, context: aio.ServicerContext) -> pb.SignReply:
        self.calls += 1
        if self.refuse:
            metadata = ((REFUSED, "UNAVAILABLE"),) if self.mark else ()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "audit log not writable", trailing_metadata=metadata)
        if self.hang_first and self.calls == 1:
            await asyncio.Event().wait()  # cancelled when the transport goes
        return pb.SignReply(ocsp_response=b"DER", generation=1)

    async def SignBatch(self, request: pb.SignBatchRequest, context: aio.ServicerContext) -> pb.SignBatchReply:
        if not self.batch:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        reply = await self.Sign(request.requests[0], context)
        return pb.SignBatchReply(items=[pb.SignBatchItem(reply=reply)] * len(request.requests))


async def start(stand: Stand, options: list[tuple[str, int]]) -> tuple[aio.Server, str]:
    server = aio.server(options=options)
    signer_pb2_grpc.add_SignerServicer_to_server(stand, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# -- settings -----------------------------------------------------------------------------------------


def test_defaults_agree() -> None:
    # The frontend's copy of the signer's default is the signer's default...
    assert SIGNER_DEFAULT_MIN_PING_INTERVAL == DEFAULT_MIN_PING_INTERVAL.total_seconds()
    # ... and the frontend's default keepalive respects it with room for timer slack.
    assert Keepalive().interval >= 2 * SIGNER_DEFAULT_MIN_PING_INTERVAL
    assert keepalive_warning(Keepalive().interval) is None
    client = dict(CHANNEL_OPTIONS)
    server = dict(options_for(DEFAULT_MIN_PING_INTERVAL.total_seconds()))
    assert client["grpc.keepalive_time_ms"] >= 2 * server["grpc.http2.min_ping_interval_without_data_ms"]
    # The client pings a connection with no call in flight, and keeps pinging one where only the idle
    # Watch stream is open; the signer permits both.
    assert client["grpc.keepalive_permit_without_calls"] == 1 and client["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.http2.max_ping_strikes"] == 2


def test_keepalive_below_the_signer_default_is_warned_about() -> None:
    text = keepalive_warning(5.0)
    assert text is not None and "min_ping_interval" in text and "5s" in text and "too_many_pings" in text
    assert keepalive_warning(SIGNER_DEFAULT_MIN_PING_INTERVAL) is None


def test_check_warns_about_a_short_keepalive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from frontend.__main__ import main
    from tests.unit.frontend.frontend_pki import TestCA

    ca = TestCA("Check CA")
    (tmp_path / "short").mkdir()
    (tmp_path / "default").mkdir()
    short = frontend_setup(tmp_path / "short", ca, '[signer]\nkeepalive = "5s"\n')
    assert main(["--config", str(short), "--check"]) == 0
    err = capsys.readouterr().err
    assert f"ocsp-frontend: {short}: warning: signer.keepalive (5s) is shorter than" in err
    assert main(["--config", str(frontend_setup(tmp_path / "default", ca)), "--check"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_channel_options_follow_the_config() -> None:
    opts = dict(channel_options(Keepalive(45.0, 2.5)))
    assert opts["grpc.keepalive_time_ms"] == 45000 and opts["grpc.keepalive_timeout_ms"] == 2500


def test_frontend_keys(tmp_path: Path) -> None:
    from tests.unit.frontend.frontend_pki import TestCA

    ca = TestCA("Keepalive CA")
    cfg = load_frontend_config(frontend_setup(tmp_path, ca, '[signer]\nkeepalive = "45s"\n'
                                                           'keepalive_timeout = "3s"\nhealth_interval = "500ms"\n'))
    assert (cfg.signer.keepalive, cfg.signer.keepalive_timeout, cfg.signer.health_interval) == (45.0, 3.0, 0.5)
    (tmp_path / "d").mkdir()
    d = load_frontend_config(frontend_setup(tmp_path / "d", ca)).signer
    assert (d.keepalive, d.keepalive_timeout, d.health_interval) == (30.0, 10.0, 2.0)
    for text, key in [('keepalive = "500ms"', "signer.keepalive"), ('keepalive = "3h"', "signer.keepalive"),
                      ('keepalive_timeout = "10ms"', "signer.keepalive_timeout"),
                      ('health_interval = "2h"', "signer.health_interval"),
                      ('keepalive = "often"', "signer.keepalive")]:
        where = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        where.mkdir()
        with pytest.raises(ConfigError) as info:
            load_frontend_config(frontend_setup(where, ca, f"[signer]\n{text}\n"))
        assert info.value.key == key, info.value


def test_signer_key(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    conf = write_setup(base, [make_ca("alpha")])
    assert load_signer_config(conf).listen.min_ping_interval == DEFAULT_MIN_PING_INTERVAL
    text = conf.read_text()
    conf.write_text(text.replace("[listen]\n", '[listen]\nmin_ping_interval = "45s"\n'))
    cfg = load_signer_config(conf)
    assert cfg.listen.min_ping_interval == timedelta(seconds=45)
    assert dict(server_options(cfg))["grpc.http2.min_ping_interval_without_data_ms"] == 45000
    for bad in ('"500ms"', '"3h"', '"never"'):
        conf.write_text(text.replace("[listen]\n", f"[listen]\nmin_ping_interval = {bad}\n"))
        with pytest.raises(ConfigError) as info:
            load_signer_config(conf)
        assert info.value.key == "listen.min_ping_interval", info.value


# -- the retry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [True, False])
def test_sign_whose_connection_gets_goaway_is_sent_again(batch: bool) -> None:
    """A signer allowing one ping per 5 s and a client pinging every second: the signer drops the
    connection (GOAWAY too_many_pings) while a Sign (or the SignBatch carrying it) is in flight on it.
    It goes out again over a new connection and is answered, instead of tryLater."""

    async def go() -> None:
        stand = Stand(hang_first=True, batch=batch)
        server, address = await start(stand, options_for(5.0))
        client = SignerClient([address], 20.0, keepalive=Keepalive(1.0, 5.0))
        try:
            result = await client.sign(statuses(), None)
            assert result.der == b"DER"
            assert stand.calls == 2 and client.retries == 1
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("mark", [True, False])
def test_a_refusal_is_not_sent_again(mark: bool, batch: bool) -> None:
    """An UNAVAILABLE the signer answered (marked) is final for that address; without the mark (a signer
    from before the mark) it cannot be told from a lost connection and is sent once more."""

    async def go() -> None:
        stand = Stand(refuse=True, mark=mark, batch=batch)
        server, address = await start(stand, options_for(10.0))
        client = SignerClient([address], 5.0)
        try:
            with pytest.raises(TryLater, match="audit log not writable"):
                await client.sign(statuses(), None)
            assert stand.calls == (1 if mark else 2)
            assert client.retries == (0 if mark else 1)
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(go())


def test_a_signer_that_is_down_is_not_retried(tmp_path: Path) -> None:
    async def go() -> None:
        client = SignerClient([f"unix:{tmp_path}/nobody.sock"], 5.0)
        try:
            with pytest.raises(TryLater):
                await client.sign(statuses(), None)
            assert client.retries == 0
        finally:
            await client.close()

    asyncio.run(go())


def test_the_signer_marks_its_refusals(tmp_path: Path) -> None:
    """The real SignerService: every error status of Sign carries the refusal mark."""
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    stranger = make_ca("stranger")
    conf = write_setup(base, [ca])
    token = token_for(ca)

    async def scenario(stub: signer_pb2_grpc.SignerStub) -> None:
        from signer.token import TokenError

        token.fail = TokenError("the token is gone")
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (REFUSED, "UNAVAILABLE") in tuple(info.value.trailing_metadata() or ())
        token.fail = None
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Sign(pb.SignRequest(responses=[status(stranger.cert_id(1))]))
        assert (REFUSED, "PERMISSION_DENIED") in tuple(info.value.trailing_metadata() or ())
        await expect_error(stub.Sign(pb.SignRequest()), grpc.StatusCode.INVALID_ARGUMENT, "responses")

    run_server(conf, token, scenario)
