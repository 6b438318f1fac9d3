"""HTTP/1.1 message framing and its limits in frontend/http_conn.py: 413 (Content-Length and
chunked), 411, 400, 431 (counted on raw bytes), Expect: 100-continue, keep-alive (HTTP/1.1 only), HTTP/1.0, and
nothing answered after a message that closes the connection."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httptools
import pytest

from frontend.config import ListenConfig
from tests.unit.frontend.frontend_server_env import (
    LISTEN,
    Env,
    b64path,
    post_bytes,
    raw,
    serving,
    split_responses,
    statuses,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


def test_413_and_close(env: Env) -> None:
    data = raw(env, post_bytes(b"\x30" * 3000) + post_bytes(env.request(env.a, 0x100)))
    (resp,) = split_responses(data)  # the second request is never answered: the connection closed
    assert resp[0].startswith(b"HTTP/1.1 413") and resp[1][b"connection"] == b"close"


def test_413_chunked(env: Env) -> None:
    chunk = b"\x30" * 1500
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    data = raw(env, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert data.startswith(b"HTTP/1.1 413")


def test_expect_100_continue(env: Env) -> None:
    der = env.request(env.a, 0x100)
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(der))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(der)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and statuses(split_responses(data)[0][2])[0]["serial"] == 0x100


def test_411_without_length(env: Env) -> None:
    data = raw(env, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 411")


def test_bad_http_400_and_close(env: Env) -> None:
    data = raw(env, b"GARBAGE\x00\x01 not http\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400") and b"Connection: close" in data


def test_header_limit(env: Env) -> None:
    data = raw(env, b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431")


def test_header_limit_counts_raw_bytes(env: Env) -> None:
    # httptools hands over a header value only once it is complete: an endless value must still
    # be cut off once the head passes max_header_bytes + the URL limit, not when it ends.
    limit = env.listen.max_header_bytes + env.server.max_url
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as s:
        s.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < limit + 65536:
                s.sendall(b"a" * 4096)
                sent += 4096
        except OSError:
            pass
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    # Just under the limit across many writes is still served (the count restarts per message).
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as s:
        for _ in range(3):
            s.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 4000 + b"\r\n\r\n")
            data = b""
            while not data.endswith(b"ok\n"):
                data += s.recv(4096)
            assert data.startswith(b"HTTP/1.1 200")


def test_keep_alive(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        for serial in (0x100, 0x101, 0x100):
            conn.request("POST", "/", body=env.request(env.a, serial))
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("connection") is None
            assert statuses(r.read())[0]["serial"] == serial
        conn.request("GET", "/-/health")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()


def test_http10_closes(env: Env) -> None:
    data = raw(env, b"GET /-/health HTTP/1.0\r\n\r\n", timeout=3)
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data and data.endswith(b"ok\n")


@pytest.mark.parametrize(("version", "header"), [
    ("1.0", "Connection: keep-alive"), ("1.0", "Proxy-Connection: keep-alive"),
    ("2.0", "Connection: Keep-Alive"), ("0.9", "proxy-connection: keep-alive"), ("1.0", "Keep-Alive: 5"),
])
def test_only_http11_kept_alive(env: Env, version: str, header: str) -> None:
    data = raw(env, f"GET /-/health HTTP/{version}\r\nHost: x\r\n{header}\r\n\r\n".encode()
               + b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
    (resp,) = split_responses(data)
    assert resp[0].startswith(b"HTTP/1.1 200") and resp[1][b"connection"] == b"close"


def test_http11_with_connection_headers_kept_alive(env: Env) -> None:
    one = b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nProxy-Connection: keep-alive\r\n\r\n"
    data = raw(env, one + one + b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
    out = split_responses(data)
    assert [b"connection" in r[1] for r in out] == [False, False, True]


def test_llhttp_keeps_alive_without_connection_header_only_http11() -> None:
    """What on_message_complete relies on to skip get_http_version(): without a Connection or
    Proxy-Connection header, llhttp keeps a message alive only when it is HTTP/1.1."""
    class Probe:
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.seen: tuple[bool, str] | None = None

        def on_message_complete(self) -> None:
            self.seen = (self.parser.should_keep_alive(), self.parser.get_http_version())

    accepted = []
    for major in range(10):
        for minor in range(10):
            probe = Probe()
            try:
                probe.parser.feed_data(b"GET / HTTP/%d.%d\r\nHost: x\r\nKeep-Alive: 1\r\n\r\n" % (major, minor))
            except httptools.HttpParserError:
                continue
            assert probe.seen is not None
            accepted.append(probe.seen[1])
            assert probe.seen[0] == (probe.seen[1] == "1.1"), probe.seen
    assert "1.1" in accepted and "1.0" in accepted


async def _settled(timeout: float = 5.0) -> None:
    """Wait until no task but this one is left on the server's loop (answers, drains, signer calls
    finished), so an absence (nothing signed) is observed after the fact, not after a guessed delay."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    me = asyncio.current_task()
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                  and "sweep" not in repr(t.get_coro()) and "serve" not in repr(t.get_coro())]
        if not others:
            return
        assert loop.time() < deadline, f"tasks still running: {others}"
        await asyncio.wait(others, timeout=max(0.0, deadline - loop.time()))


@pytest.mark.parametrize("first", [
    b"GET /-/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",  # HTTP/1.0: answered, then closed
    b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # 411: answered, then closed
    b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
])
def test_nothing_after_a_closing_message(env: Env, first: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # Requests pipelined after a message that closes the connection are neither answered nor signed.
    miss = b"GET " + b64path(env.request(env.a, 0x100)).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with caplog.at_level("WARNING"):
        out = split_responses(raw(env, first + miss + first + miss))
        env.call(_settled())  # whatever the server started for those bytes has run to its end
    assert len(out) == 1 and out[0][1][b"connection"] == b"close"
    assert not env.signer.calls
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]


def test_listen_config_replace_keeps_defaults() -> None:
    assert replace(ListenConfig(), port=0).max_request_bytes == 10000
