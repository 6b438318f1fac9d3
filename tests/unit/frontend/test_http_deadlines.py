"""Deadlines a client cannot stretch (frontend/http_conn.py): idle and slow clients are closed, a
client that never reads its answers is reset at the idle deadline, CRLF dribbling does not push
the deadline back, and reset() is a TCP reset even with answers unsent."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from pathlib import Path

import uvloop

from frontend.config import ListenConfig
from tests.integration.conftest import wait_until
from tests.unit.frontend.frontend_server_env import Env, open_count


def test_idle_and_slow_clients_are_closed(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            assert s.recv(100) == b""  # idle: closed by the server
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            s.sendall(b"GET /-/health HTTP/1.1\r\n")  # never finishes its headers
            assert s.recv(100).startswith(b"HTTP/1.1 408")
    finally:
        e.close()


_GONE = select.POLLRDHUP | select.POLLERR | select.POLLHUP  # FIN or reset from the server; not POLLIN


def _server_side(env: Env) -> list[tuple[int, bool]]:
    """(unsent bytes, reading paused) of each connection the server holds, read on its loop."""
    async def look() -> list[tuple[int, bool]]:
        return [(c.transport.get_write_buffer_size() if c.transport else 0, c.paused)
                for c in env.server.connections]
    return env.call(look())


def test_pipelining_client_that_never_reads_is_aborted(tmp_path: Path) -> None:
    """Answers pile up unsent: at the idle deadline the connection is aborted (a plain close would wait
    for the client to read them, for ever)."""
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", e.port))
        s.setblocking(False)
        burst = b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        # Send until the server holds answers it cannot write (its write buffer is the readiness signal).
        for _ in range(10_000):
            try:
                s.send(burst)
            except BlockingIOError:
                pass
            if any(unsent > 0 and paused for unsent, paused in _server_side(e)):
                break
        else:
            raise AssertionError("the server never held unsent answers")
        poller = select.poll()
        poller.register(s, _GONE)
        timeout = e.listen.idle_timeout + 4
        assert poller.poll(timeout * 1000), f"connection still open {timeout}s after the client stopped"
        wait_until(lambda: open_count(e) == 0, 5, "the server to forget the connection")
        s.close()
    finally:
        e.close()


def test_crlf_dribbler_is_cut_off_at_the_idle_deadline(tmp_path: Path) -> None:
    """Empty lines between messages are not a request: they do not push the idle deadline back."""
    e = Env(tmp_path, ListenConfig(port=0, idle_timeout=1, request_timeout=1))
    try:
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            poller = select.poll()
            poller.register(s, _GONE | select.POLLIN)
            limit = time.monotonic() + e.listen.idle_timeout + 4
            gone = False
            while not gone and time.monotonic() < limit:
                try:
                    s.sendall(b"\r\n")
                except OSError:
                    gone = True
                    break
                gone = bool(poller.poll(300))  # paces the dribble and notices the close
            assert gone, "a client sending CRLF every 300 ms is never cut off"
            try:
                assert s.recv(100) == b""  # closed, nothing said: it never sent a request
            except ConnectionResetError:
                pass
    finally:
        e.close()


def test_reset_reaches_a_client_that_does_not_read() -> None:
    """abort() alone would send a FIN (nothing unread on the server side), queued behind answers the
    client is not taking: the client would never see it. reset() must be a TCP reset."""
    from frontend.http_conn import reset, unsent

    async def go() -> tuple[int, list[tuple[int, int]]]:
        transports: list[asyncio.Transport] = []

        class Writer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transports.append(transport)  # type: ignore[arg-type]
                transport.write(b"z" * 3_000_000)  # type: ignore[attr-defined]

        server = await asyncio.get_running_loop().create_server(Writer, "127.0.0.1", 0)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, server.sockets[0].getsockname())
            while not transports:
                await asyncio.sleep(0)
            left = unsent(transports[0])
            reset(transports[0])
            poller = select.poll()
            poller.register(client, _GONE)
            for _ in range(100):  # the reset is on its way once the loop has run the close
                events = poller.poll(0)
                if events:
                    break
                await asyncio.sleep(0.01)
            return left, events
        finally:
            client.close()
            server.close()

    left, events = uvloop.run(go())
    assert left > 1_000_000  # most of it never reached the client
    assert events and events[0][1] & select.POLLERR, events
