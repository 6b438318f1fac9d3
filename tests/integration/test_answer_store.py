"""frontend.answer_store against a real redis-server: the layout, the lock, and Redis killed mid-use."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from frontend.answer_store import AnswerStore, StoreConfig, check_url, open_store, redacted
from shared.answers import AnswerKey, StoredAnswer, decode
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm
from tests.integration.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

PREFIX = "t:"


def key(serial: int, alg: HashAlgorithm = HashAlgorithm.SHA1, ca: str = "ca-1") -> AnswerKey:
    n = alg.digest_size
    return AnswerKey(ca, (CertId(alg, b"\x01" * n, b"\x02" * n, serial.to_bytes(2, "big")),))


def answer(serial: int = 1, fp: str = "fp-1") -> StoredAnswer:
    now = int(time.time())
    return StoredAnswer(b"\x30\x03\x0a\x01" + bytes([serial % 256]), now, now + 3600, now, CertStatus.GOOD, fp)


def run(server: RedisServer, body: Callable[[AnswerStore], Awaitable[Any]], **kwargs: Any) -> Any:
    async def go() -> Any:
        store = open_store(StoreConfig(server.url, prefix=PREFIX, timeout=0.5), **kwargs)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def raw(server: RedisServer, body: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(server.url)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_put_get_and_the_layout(redis_server: RedisServer) -> None:  # noqa: F811
    expires = time.time() + 600
    k, a = key(1), answer(1)

    async def body(store: AnswerStore) -> None:
        assert await store.get(k) is None
        await store.put(k, a, expires)
        assert await store.get(k) == a
        assert await store.get_many([key(2), k]) == [None, a]
        assert await store.get_many([]) == []
        assert store.available

    run(redis_server, body)

    async def look(client: aioredis.Redis) -> None:
        assert decode(await client.get(k.text(PREFIX))) == a
        pttl = await client.pttl(k.text(PREFIX))
        assert 590_000 < pttl <= 600_000  # PXAT the expiry
        members = await client.zrange(f"{PREFIX}due:ca-1", 0, -1, withscores=True)
        assert members == [(k.certid_text().encode(), pytest.approx(expires))]

    raw(redis_server, look)


def test_not_stored_multi_certid_or_expired(redis_server: RedisServer) -> None:  # noqa: F811
    multi = AnswerKey("ca-1", key(1).cert_ids + key(2).cert_ids)

    async def body(store: AnswerStore) -> None:
        await store.put(multi, answer(), time.time() + 600)
        await store.put(key(3), answer(), time.time() - 1)
        assert await store.get(multi) is None
        assert await store.get(key(3)) is None

    run(redis_server, body)
    assert raw(redis_server, lambda c: c.dbsize()) == 0


def test_a_bad_value_is_a_miss(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    raw(redis_server, lambda c: c.set(key(1).text(PREFIX), b"\x09garbage"))

    async def body(store: AnswerStore) -> None:
        assert await store.get(key(1)) is None
        assert store.available

    with caplog.at_level(logging.WARNING, "frontend.answer_store"):
        run(redis_server, body)
    assert "not a stored answer" in caplog.text


def test_an_error_answer_is_a_miss_not_an_outage(redis_server: RedisServer,  # noqa: F811
                                                 caplog: pytest.LogCaptureFixture) -> None:
    raw(redis_server, lambda c: c.rpush(key(1).text(PREFIX), b"a list"))

    async def body(store: AnswerStore) -> None:
        assert await store.get(key(1)) is None  # WRONGTYPE
        assert store.available
        await store.put(key(2), answer(2), time.time() + 600)
        assert await store.get(key(2)) == answer(2)

    with caplog.at_level(logging.WARNING, "frontend.answer_store"):
        run(redis_server, body)
    assert "refused GET" in caplog.text and "unavailable" not in caplog.text


def test_delete_removes_answers_and_index_members(redis_server: RedisServer) -> None:  # noqa: F811
    keys = [key(1), key(1, HashAlgorithm.SHA256), key(2), key(3, ca="ca-2")]

    async def body(store: AnswerStore) -> tuple[list[Any], list[AnswerKey], list[AnswerKey]]:
        for k in keys:
            await store.put(k, answer(), time.time() + 600)
        await store.delete([keys[0], keys[1], keys[3]])
        await store.delete([])
        got = await store.get_many(keys)
        return got, await store.due("ca-1", time.time() + 3600, 10), await store.due("ca-2", time.time() + 3600, 10)

    got, due1, due2 = run(redis_server, body)
    assert [g is not None for g in got] == [False, False, True, False]
    assert due1 == [key(2)] and due2 == []


def test_due_and_members(redis_server: RedisServer) -> None:  # noqa: F811
    now = time.time()

    async def body(store: AnswerStore) -> None:
        for serial in range(1, 21):
            await store.put(key(serial), answer(serial), now + 100 * serial)
        assert await store.due("ca-1", now + 350, 10) == [key(1), key(2), key(3)]
        assert await store.due("ca-1", now + 2500, 5) == [key(s) for s in range(1, 6)]
        assert await store.due("other", now + 2500, 5) == []
        seen: list[AnswerKey] = []
        cursor = 0
        while True:
            cursor, batch = await store.members("ca-1", cursor, 7)
            seen += batch
            if cursor == 0:
                break
        assert sorted(seen, key=lambda k: k.cert_ids[0].serial) == [key(s) for s in range(1, 21)]

    run(redis_server, body)


def test_bad_index_members_are_skipped(redis_server: RedisServer) -> None:  # noqa: F811
    raw(redis_server, lambda c: c.zadd(f"{PREFIX}due:ca-1", {"nonsense": 1, key(1).certid_text(): 2}))

    async def body(store: AnswerStore) -> None:
        assert await store.due("ca-1", time.time(), 10) == [key(1)]
        assert (await store.members("ca-1", 0, 10))[1] == [key(1)]

    run(redis_server, body)


def test_lock_renew_unlock(redis_server: RedisServer) -> None:  # noqa: F811
    async def body(store: AnswerStore) -> None:
        token = await store.lock("refresh:ca-1", 5)
        assert token
        assert await store.lock("refresh:ca-1", 5) is None  # held
        assert await store.renew("refresh:ca-1", token, 10)
        assert not await store.renew("refresh:ca-1", "not-ours", 10)
        await store.unlock("refresh:ca-1", "not-ours")  # not released
        assert await store.lock("refresh:ca-1", 5) is None
        await store.unlock("refresh:ca-1", token)
        again = await store.lock("refresh:ca-1", 5)
        assert again and again != token
        assert not await store.renew("refresh:ca-1", token, 10)  # the old token is nobody's

    run(redis_server, body)
    assert 0 < raw(redis_server, lambda c: c.pttl(f"{PREFIX}lock:refresh:ca-1")) <= 5000


def test_redis_killed_mid_use_misses_then_recovers(redis_server: RedisServer,  # noqa: F811
                                                   caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]

    async def body(store: AnswerStore) -> None:
        await store.put(key(1), answer(), time.time() + 600)
        assert await store.get(key(1)) is not None
        redis_server.kill()
        # Every call answers as if Redis had nothing, and none raises.
        assert await store.get(key(1)) is None
        assert not store.available
        assert await store.get_many([key(1), key(2)]) == [None, None]
        await store.put(key(2), answer(), time.time() + 600)
        await store.delete([key(1)])
        assert await store.due("ca-1", time.time() + 3600, 10) == []
        assert await store.members("ca-1", 0, 10) == (0, [])
        assert await store.lock("x", 1) is None
        assert not await store.renew("x", "t", 1)
        await store.unlock("x", "t")
        assert not store.spawn_put(key(2), answer(), time.time() + 600)  # in the backoff: skipped
        redis_server.start()
        # Within the backoff Redis is not asked at all.
        assert await store.get(key(1)) is None and not store.available
        clock[0] += 1.5
        await store.put(key(3), answer(3), time.time() + 600)
        assert store.available
        assert await store.get(key(3)) == answer(3)
        assert await store.get(key(1)) is None  # the killed server's data is gone

    with caplog.at_level(logging.INFO, "frontend.answer_store"):
        run(redis_server, body, monotonic=lambda: clock[0])
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 1  # rate-limited: one line for the burst of failures
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_stopped_redis_costs_at_most_the_timeout(tmp_path: Any) -> None:
    """Nothing listens on the socket: each call fails fast, then none is tried until the backoff ends."""
    server = RedisServer(tmp_path / "none")

    async def body(store: AnswerStore) -> float:
        t = time.monotonic()
        for _ in range(50):
            assert await store.get(key(1)) is None
        return time.monotonic() - t

    assert run(server, body) < 0.5


def test_a_slow_redis_is_a_miss_within_the_timeout(redis_server: RedisServer) -> None:  # noqa: F811
    """A server that does not answer (SIGSTOP) costs one timeout, then the backoff skips it."""
    import os
    import signal

    async def body(store: AnswerStore) -> tuple[float, float]:
        await store.put(key(1), answer(), time.time() + 600)
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            assert await store.get(key(1)) is None
            first = time.monotonic() - t
            t = time.monotonic()
            assert await store.get(key(1)) is None
            second = time.monotonic() - t
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        return first, second

    async def go() -> tuple[float, float]:
        store = open_store(StoreConfig(redis_server.url, prefix=PREFIX, timeout=0.05))
        try:
            return await body(store)
        finally:
            await store.close()

    first, second = asyncio.run(go())
    assert 0.04 < first < 0.5
    assert second < 0.01


def test_spawn_put_is_bounded(redis_server: RedisServer) -> None:  # noqa: F811
    async def body(store: AnswerStore) -> None:
        assert store.spawn_put(key(1), answer(), time.time() + 600)
        assert store.spawn_put(key(2), answer(), time.time() + 600)
        assert not store.spawn_put(key(3), answer(), time.time() + 600)  # two already pending
        assert store.skipped_puts == 1
        await store.flush()
        assert store.pending_puts == 0
        assert [a is not None for a in await store.get_many([key(1), key(2), key(3)])] == [True, True, False]

    run(redis_server, body, max_pending=2)


def test_urls() -> None:
    assert check_url("redis://localhost:6379/0") is None
    assert check_url("rediss://user:pw@redis.example:6380/1") is None
    assert check_url("unix:///run/redis/redis.sock") is None
    assert check_url("http://x") is not None
    assert check_url("unix://") is not None
    assert check_url("redis://") is not None
    assert redacted("rediss://user:secret@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
