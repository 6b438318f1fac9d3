"""Pipelined requests in frontend/http_conn.py: answers in request order whatever each costs, a
few signer calls at a time, and input parsed only as fast as answers leave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until
from tests.unit.frontend.frontend_server_env import (
    LISTEN,
    MALFORMED,
    Client,
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


def test_pipelining_keeps_order(env: Env) -> None:
    env.signer.delay = 0.1  # the first (signed) answer is the slowest; it must still come first
    cached = env.request(env.a, 0x100)
    env.post(cached)
    env.signer.calls.clear()
    reqs = (post_bytes(env.request(env.a, 0x101, nonce=b"n" * 8))
            + b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_bytes(cached)
            + post_bytes(b"junk")
            + b"GET " + b64path(env.request(env.b, 0x201)).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_bytes(cached, b"Connection: close\r\n"))
    out = split_responses(raw(env, reqs))
    assert [r[0][:12] for r in out] == [b"HTTP/1.1 200"] * 6
    assert statuses(out[0][2])[0]["serial"] == 0x101
    assert out[1][2] == b"ok\n"
    assert statuses(out[2][2])[0]["serial"] == 0x100
    assert out[3][2] == MALFORMED
    assert statuses(out[4][2])[0]["serial"] == 0x201
    assert statuses(out[5][2])[0]["serial"] == 0x100 and out[5][1][b"connection"] == b"close"


def test_pipelined_misses_run_a_few_at_a_time(env: Env) -> None:
    # 40 requests in one write: all answered, in order, but not 40 Sign calls at once.
    env.signer.delay = 0.05
    reqs = b"".join(post_bytes(env.request(env.a, 0x300 + i)) for i in range(39))
    reqs += post_bytes(env.request(env.a, 0x300 + 39), b"Connection: close\r\n")
    out = split_responses(raw(env, reqs))
    assert [statuses(r[2])[0]["serial"] for r in out] == [0x300 + i for i in range(40)]
    assert len(env.signer.calls) == 40
    assert 1 < env.signer.max_active <= 8


def _conn_state(env: Env) -> list[tuple[bool, int]]:
    """(reading paused, answers queued) of each connection the server holds, read on its loop."""
    async def look() -> list[tuple[bool, int]]:
        return [(c.paused, len(c.queue)) for c in env.server.connections]
    return env.call(look())


def test_pipelined_input_is_parsed_only_as_fast_as_it_is_answered(env: Env) -> None:
    """600 requests in one write: the server stops parsing once 32 answers are queued (plus what one
    16 KB parser slice holds), keeps the rest of the input unparsed, and goes on as answers leave,
    instead of making a task for every request one read brought."""
    env.signer.delay = 0.3
    reqs = [post_bytes(env.request(env.a, 0x100, nonce=b"n%05d" % i)) for i in range(600)]
    c = Client(env)
    try:
        c.sock.sendall(b"".join(reqs))
        wait_until(lambda: any(paused for paused, _ in _conn_state(env)), 5, "the server to stop reading")
        ((_, queued),) = _conn_state(env)
        per_slice = 16384 // min(len(r) for r in reqs) + 1
        assert queued <= 32 + per_slice < 600, queued
        env.signer.delay = 0
        for i in range(600):
            line, _, body = c.answer()
            assert line.startswith(b"HTTP/1.1 200") and json.loads(body)["nonce"].endswith((b"n%05d" % i).hex())
    finally:
        c.close()


def test_a_half_closed_client_gets_every_answer_it_asked_for(env: Env) -> None:
    """A client that sends its requests and then shuts its write side (HTTP/1.1 allows it; `nc -N`
    does it) gets every answer, the ones still being signed included, then the connection closes."""
    env.signer.delay = 0.2  # answers in the making when the client's FIN arrives
    cached = env.request(env.a, 0x100)
    env.post(cached)
    one = post_bytes(env.request(env.a, 0x101, nonce=b"h" * 8))
    out = split_responses(raw(env, one, shut=True))
    assert [r[0][:12] for r in out] == [b"HTTP/1.1 200"], out
    assert statuses(out[0][2])[0]["serial"] == 0x101
    several = one + post_bytes(cached) + post_bytes(env.request(env.b, 0x201, nonce=b"i" * 8))
    out = split_responses(raw(env, several, shut=True))
    assert [r[0][:12] for r in out] == [b"HTTP/1.1 200"] * 3, out
    assert [statuses(r[2])[0]["serial"] for r in out] == [0x101, 0x100, 0x201]
    # Nothing in the making: the cached answer goes out, then the close.
    out = split_responses(raw(env, post_bytes(cached), shut=True))
    assert [r[0][:12] for r in out] == [b"HTTP/1.1 200"]
    wait_until(lambda: not env.server.connections, 5, "the half-closed connections to be closed")
