"""signer.local_callers and signer.unix_socket inside one process: a real grpc.aio server behind the
relay, real unix sockets, the kernel's SO_PEERCRED. (Another user, and the signer itself, are in
tests/integration/test_local_callers.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.local_callers import LocalCallerInterceptor, LocalListener, caller
from signer.unix_socket import created_with_mode

METHOD = "/test.Peer/Who"


def short_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lc-", dir="/tmp"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_socket_is_never_wider_than_0600_before_its_mode(mode: int) -> None:
    d = short_dir()
    path = d / "s.sock"
    old = os.umask(0)  # the worst case: a socket bound now would be 0777
    try:
        with socket.socket(socket.AF_UNIX) as s:
            with created_with_mode(path, mode):
                s.bind(str(path))
                during = _mode(path)
            after = _mode(path)
            assert os.umask(0) == 0  # the caller's umask is back
    finally:
        os.umask(old)
    assert during == 0o600
    assert after == mode


def test_socket_modes_wider_than_0660_are_refused() -> None:
    with pytest.raises(ValueError, match="wider"), created_with_mode(Path("/nonexistent"), 0o666):
        pass


# -- the relay in front of a real grpc.aio server ---------------------------------------------------


async def _who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    c = caller()
    return f"{c.pid} {c.uid} {c.gid} {context.peer()}".encode() if c is not None else b"none"


Scenario = Callable[[LocalListener, grpc.aio.Server], Awaitable[None]]


def run_relay(scenario: Scenario, *, mode: int = 0o660, max_connections: int = 8,
              options: list[tuple[str, Any]] | None = None) -> None:
    async def main() -> None:
        listener = LocalListener(short_dir() / "signer.sock", mode, max_connections)
        server = grpc.aio.server(interceptors=[LocalCallerInterceptor(listener)], options=options or [])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Peer", {
            "Who": grpc.unary_unary_rpc_method_handler(_who)})])
        listener.prepare()
        server.add_insecure_port(listener.upstream_address)
        await server.start()
        await listener.start()
        try:
            await scenario(listener, server)
        finally:
            listener.stop_accepting()
            await server.stop(None)
            await listener.close()
        assert not listener.path.exists() and not listener.private_dir.exists()

    asyncio.run(main())


async def call(address: str) -> bytes:
    # A connection of its own (gRPC shares the connections of channels to one address by default).
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return await channel.unary_unary(METHOD)(b"", timeout=5)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


def test_each_call_carries_its_callers_kernel_credentials() -> None:
    async def scenario(listener: LocalListener, server: grpc.aio.Server) -> None:
        assert _mode(listener.path) == 0o660 and _mode(listener.private_dir) == 0o700
        first, second = await call(f"unix:{listener.path}"), await call(f"unix:{listener.path}")
        pid, uid, gid, peer = first.decode().split(" ")
        assert (int(pid), int(uid), int(gid)) == (os.getpid(), os.getuid(), os.getgid())
        # gRPC names each relayed connection by the relay's own bound address, one per connection.
        assert peer.startswith(f"unix:{listener.private_dir}/")
        assert second.decode().split(" ")[3] != peer
        await until(lambda: listener.connections == 0, "both relayed connections to close")

    run_relay(scenario)


def test_a_connection_the_relay_did_not_make_is_refused() -> None:
    async def scenario(listener: LocalListener, server: grpc.aio.Server) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(listener.upstream_address)  # straight to gRPC's private socket
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

    run_relay(scenario)


def test_connections_beyond_the_limit_are_closed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(listener: LocalListener, server: grpc.aio.Server) -> None:
        loop = asyncio.get_running_loop()
        held = []
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            await loop.sock_connect(s, str(listener.path))
            held.append(s)
        await until(lambda: listener.connections == 2, "two connections relayed")
        extra = socket.socket(socket.AF_UNIX)
        extra.setblocking(False)
        await loop.sock_connect(extra, str(listener.path))
        assert await asyncio.wait_for(loop.sock_recv(extra, 1), 5) == b""  # closed by the relay
        extra.close()
        assert listener.connections == 2
        for s in held:
            s.close()
        await until(lambda: listener.connections == 0, "the held connections to close")
        assert (await call(f"unix:{listener.path}")).decode().startswith(f"{os.getpid()} ")

    with caplog.at_level(logging.INFO, logger="ocsp-signer"):
        run_relay(scenario, max_connections=2)
    refused = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refused) == 1 and f"pid {os.getpid()}" in refused[0] and "max_socket_connections" in refused[0]
    connected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("local caller")]
    assert len(connected) == 1 and f"uid {os.getuid()}" in connected[0]  # once per caller, not per connection


def _frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + b"\0\0\0\0" + payload


async def _frames(sock: socket.socket, want: Callable[[int, int, bytes], bool]) -> None:
    loop = asyncio.get_running_loop()
    buf = b""
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            kind, flags, payload = buf[3], buf[4], buf[9:9 + n]
            buf = buf[9 + n:]
            if want(kind, flags, payload):
                return
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert data, "the connection closed before the PING ACK"
        buf += data


def test_http2_pings_pass_through_byte_for_byte() -> None:
    """An HTTP/2 PING (what keepalive sends) is answered by gRPC through the relay with its payload."""
    async def scenario(listener: LocalListener, server: grpc.aio.Server) -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, str(listener.path))
        payload = os.urandom(8)
        await loop.sock_sendall(s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, b"") + _frame(6, 0, payload))
        await _frames(s, lambda kind, flags, body: kind == 6 and flags & 1 == 1 and body == payload)
        s.close()

    run_relay(scenario)


def test_either_side_closing_closes_both() -> None:
    async def scenario(listener: LocalListener, server: grpc.aio.Server) -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, str(listener.path))
        await loop.sock_sendall(s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, b""))
        await until(lambda: listener.connections == 1, "the connection relayed")
        # gRPC's side goes away (the server stops): the caller is told by EOF, and the relay forgets it.
        await server.stop(None)
        data = b"x"
        while data:
            data = await asyncio.wait_for(loop.sock_recv(s, 65536), 5)
        await until(lambda: listener.connections == 0, "the relay to drop the connection")
        s.close()

    run_relay(scenario)


# -- the private directory --------------------------------------------------------------------------


def test_a_private_directory_left_by_a_crash_is_emptied_and_made_0700() -> None:
    listener = LocalListener(short_dir() / "signer.sock", 0o660, 8)
    listener.private_dir.mkdir(mode=0o755)
    (listener.private_dir / "grpc.sock").write_text("stale")
    (listener.private_dir / "1f").write_text("stale")
    listener.prepare()
    assert list(listener.private_dir.iterdir()) == [] and _mode(listener.private_dir) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_private_directory_of_another_user_is_refused_and_left_alone() -> None:
    listener = LocalListener(short_dir() / "signer.sock", 0o660, 8)
    listener.private_dir.mkdir()
    kept = listener.private_dir / "theirs"
    kept.write_text("not the signer's")
    os.chown(listener.private_dir, 65534, 65534)
    with pytest.raises(ValueError, match="belongs to uid 65534"):
        listener.prepare()
    asyncio.run(listener.close())  # what serve() does after a failed start
    assert kept.read_text() == "not the signer's"


def test_a_symlink_in_place_of_the_private_directory_is_refused() -> None:
    listener = LocalListener(short_dir() / "signer.sock", 0o660, 8)
    elsewhere = short_dir()
    (elsewhere / "keep").write_text("x")
    listener.private_dir.symlink_to(elsewhere)
    with pytest.raises(ValueError, match="not a directory"):
        listener.prepare()
    assert (elsewhere / "keep").exists() and _mode(elsewhere) == 0o700


# -- configuration ----------------------------------------------------------------------------------


def _conf(base: Path, address: str, listen_extra: str) -> Path:
    from tests.unit.signer.signer_fixtures import make_ca, write_setup

    conf = write_setup(base, [make_ca("alpha")], address=address)
    conf.write_text(conf.read_text().replace(f'address = "{address}"\n', f'address = "{address}"\n{listen_extra}'))
    return conf


@pytest.mark.parametrize(("address", "extra", "key", "words"), [
    ("127.0.0.1:0", 'socket_mode = "0600"\n', "listen.socket_mode", "unix: address only"),
    ("127.0.0.1:0", "max_socket_connections = 4\n", "listen.max_socket_connections", "unix: address only"),
    ("unix:{base}/s.sock", 'socket_mode = "0666"\n', "listen.socket_mode", "0600"),
    ("unix:{base}/s.sock", "max_socket_connections = 0\n", "listen.max_socket_connections", "at least 1"),
    ("unix:{base}/" + "d" * 80 + ".sock", "", "listen.address", "too long"),
])
def test_listen_socket_keys(address: str, extra: str, key: str, words: str) -> None:
    from shared.config import ConfigError
    from signer.config import load_signer_config

    base = short_dir()
    with pytest.raises(ConfigError) as info:
        load_signer_config(_conf(base, address.format(base=base), extra))
    assert info.value.key == key and words in info.value.message, info.value


def test_listen_socket_defaults() -> None:
    from signer.config import load_signer_config

    base = short_dir()
    listen = load_signer_config(_conf(base, f"unix:{base}/s.sock", "")).listen
    assert (listen.socket_mode, listen.max_socket_connections) == (0o660, 64)
    listen = load_signer_config(_conf(base, f"unix:{base}/s.sock", 'socket_mode = "0600"\n')).listen
    assert listen.socket_mode == 0o600
