"""The shared answer store: signed answers in Redis, for every frontend of a fleet (optional).

Layout (``prefix`` is ``[cache] redis_prefix``, "ocsp:" by default; shared.answers names the keys):

- an answer: key ``AnswerKey.text(prefix)``, value ``StoredAnswer.encode()``, set with ``PXAT`` its
  expiry, min(nextUpdate, thisUpdate + max_age) (the writer computes it). Only single-CertID,
  nonce-less answers are stored (``put`` ignores others).
- the refresh index of a CA: sorted set ``<prefix>due:<ca>``, member ``AnswerKey.certid_text()``,
  score the answer's expiry (epoch seconds), written in the same pipeline as the answer. Members whose
  answer has expired are removed lazily (by the refresher); ``delete`` removes them with the answer.
- locks: ``<prefix>lock:<name>`` (``SET NX PX``; renewed and released only by the token holder).

Redis is a cache, never a dependency: every call is bounded by ``timeout`` (``[cache] redis_timeout``,
50 ms by default, so a slow Redis does not slow answers), and a call that fails answers as a miss
(``get``: None; ``put``/``delete``: nothing; ``lock``: None). One that could not reach Redis or
timed out also marks the store unavailable (``available`` False), logs it (rate-limited), and for
``backoff`` seconds no call goes to Redis at all; an error Redis answers with (a key of another
type, OOM) is a miss and no more. The first call after the backoff tries again; when it succeeds
the store is available again (logged). No method raises because of Redis. Answers read back are
only as good as the bytes stored: ``get`` decodes them (a value of another format is a miss) and the
caller decides whether to serve them (frontend.app: not expired, ``answers()`` its own status, an
acceptable responder).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from shared.answers import AnswerKey, BadStoredAnswer, StoredAnswer, decode, parse_certids
from shared.ratelog import RateLimitedLog

log = logging.getLogger("frontend.answer_store")

DEFAULT_PREFIX = "ocsp:"
DEFAULT_TIMEOUT = 0.05  # seconds: one Redis call, connecting included
BACKOFF = 1.0  # seconds without Redis after a failed call
MAX_CONNECTIONS = 32  # connections to Redis per process; a call waits (within its timeout) for one
MAX_PENDING_PUTS = 256  # fire-and-forget writes in flight (spawn_put); past it a write is skipped
LOG_INTERVAL = 10.0  # seconds between two log lines about one kind of Redis fault

# Renew / release a lock only while it still holds our token.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

_FAULTS = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What the store is built from (frontend.config's [cache] redis keys)."""

    url: str  # redis://[user:password@]host:port/db, rediss://..., unix:///path/redis.sock[?db=N]
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT


def redacted(url: str) -> str:
    """``url`` without its password (what log lines name)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class AnswerStore:
    """The Redis answer store of one process (see the module docstring). ``client`` is a
    ``redis.asyncio.Redis``; ``open_store`` builds one from the config."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT,
                 backoff: float = BACKOFF, name: str = "redis", max_pending: int = MAX_PENDING_PUTS,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.backoff = backoff
        self.name = name  # for log lines (the URL without its password)
        self.max_pending = max_pending
        self.monotonic = monotonic
        self.wall = wall
        self.available = True
        self._down_until = 0.0
        self._ratelog = RateLimitedLog(log, LOG_INTERVAL, monotonic)
        self._pending: set[asyncio.Task[None]] = set()
        self._renew = client.register_script(_RENEW)
        self._unlock = client.register_script(_UNLOCK)
        self.skipped_puts = 0  # spawn_put calls dropped because max_pending writes were in flight
        self.errors = 0  # calls that failed: Redis refused, did not answer in time, or could not be reached

    # -- the guard every call goes through ----------------------------------------------------------

    def _usable(self) -> bool:
        return self.available or self.monotonic() >= self._down_until

    async def _call(self, what: str, op: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, result) of ``await op()`` within the timeout; (False, None) when Redis is in its
        backoff, or the call failed or timed out (then the backoff starts)."""
        if not self._usable():
            return False, None
        try:
            async with asyncio.timeout(self.timeout):
                result = await op()
        except ResponseError as e:  # Redis answered, with an error (a key of another type, OOM): a miss
            self.errors += 1
            self._ratelog.log(logging.WARNING, ("error", what), "Redis %s refused %s: %s", self.name, what, e)
            return False, None
        except _FAULTS as e:
            self.errors += 1
            self._failed(what, e)
            return False, None
        if not self.available:
            self.available = True
            log.info("Redis %s answers again: sharing answers through it", self.name)
        return True, result

    def _failed(self, what: str, error: BaseException) -> None:
        was = self.available
        self.available = False
        self._down_until = self.monotonic() + self.backoff
        reason = f"no answer within {self.timeout * 1000:.0f} ms" if isinstance(error, TimeoutError) \
            else f"{type(error).__name__}: {error}"
        then = f": answering without it, trying again in {self.backoff:.1f} s" if was else ""
        self._ratelog.log(logging.WARNING, "down", "Redis %s unavailable (%s, on %s)%s", self.name, reason, what, then)

    def _index(self, ca: str) -> str:
        return f"{self.prefix}due:{ca}"

    # -- answers --------------------------------------------------------------------------------------

    def _decoded(self, key: AnswerKey, raw: bytes | None) -> StoredAnswer | None:
        if raw is None:
            return None
        try:
            return decode(raw)
        except BadStoredAnswer as e:
            self._ratelog.log(logging.WARNING, "bad", "Redis %s: the value of %s is not a stored answer (%s)",
                              self.name, key.text(self.prefix), e)
            return None

    async def get(self, key: AnswerKey) -> StoredAnswer | None:
        """The stored answer of ``key``; None on a miss, a bad value, Redis down or slow."""
        ok, raw = await self._call("GET", lambda: self.client.get(key.text(self.prefix)))
        return self._decoded(key, raw) if ok else None

    async def get_many(self, keys: Sequence[AnswerKey]) -> list[StoredAnswer | None]:
        """``get`` of each key, in one MGET."""
        if not keys:
            return []
        ok, raws = await self._call("MGET", lambda: self.client.mget([k.text(self.prefix) for k in keys]))
        if not ok:
            return [None] * len(keys)
        return [self._decoded(k, raw) for k, raw in zip(keys, raws, strict=True)]

    async def put(self, key: AnswerKey, answer: StoredAnswer, expires_at: float) -> None:
        """Store ``answer`` until ``expires_at`` (epoch seconds) and index it for its CA's refresh.
        Nothing happens for a multi-CertID key or an answer already expired. Never raises."""
        if len(key.cert_ids) != 1 or expires_at <= self.wall():
            return

        async def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key.text(self.prefix), answer.encode(), pxat=int(expires_at * 1000))
            pipe.zadd(self._index(key.ca), {key.certid_text(): expires_at})
            await pipe.execute()

        await self._call("SET", write)

    def spawn_put(self, key: AnswerKey, answer: StoredAnswer, expires_at: float) -> bool:
        """``put`` in the background (the response does not wait for it); False when it was skipped:
        Redis is in its backoff, or ``max_pending`` writes are already in flight."""
        if not self._usable():
            return False
        if len(self._pending) >= self.max_pending:
            self.skipped_puts += 1
            return False
        task = asyncio.get_running_loop().create_task(self.put(key, answer, expires_at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    @property
    def pending_puts(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Wait for the writes ``spawn_put`` started (tests; ``close``)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def delete(self, keys: Iterable[AnswerKey]) -> None:
        """Remove these answers and their index members. Never raises."""
        keys = list(keys)
        if not keys:
            return

        async def remove() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*[k.text(self.prefix) for k in keys])
            by_ca: dict[str, list[str]] = {}
            for k in keys:
                by_ca.setdefault(k.ca, []).append(k.certid_text())
            for ca, members in by_ca.items():
                pipe.zrem(self._index(ca), *members)
            await pipe.execute()

        await self._call("DEL", remove)

    # -- the refresh index ------------------------------------------------------------------------------

    def _keys(self, ca: str, members: Iterable[Any]) -> list[AnswerKey]:
        out = []
        for m in members:
            text = m.decode("ascii", "replace") if isinstance(m, bytes) else str(m)
            try:
                out.append(AnswerKey(ca, parse_certids(text)))
            except ValueError:
                self._ratelog.log(logging.WARNING, "badmember", "Redis %s: %r in %s is not a CertID",
                                  self.name, text[:200], self._index(ca))
        return out

    async def due(self, ca: str, before: float, limit: int) -> list[AnswerKey]:
        """Up to ``limit`` index members of ``ca`` whose answer expires at or before ``before``
        (epoch seconds), soonest first; [] when Redis is down."""
        ok, members = await self._call("ZRANGEBYSCORE", lambda: self.client.zrangebyscore(
            self._index(ca), "-inf", before, start=0, num=limit))
        return self._keys(ca, members) if ok else []

    async def members(self, ca: str, cursor: int, count: int) -> tuple[int, list[AnswerKey]]:
        """One ZSCAN step over ``ca``'s index: (the next cursor, 0 when done; the keys). (0, []) when
        Redis is down."""
        ok, result = await self._call("ZSCAN", lambda: self.client.zscan(self._index(ca), cursor, count=count))
        if not ok:
            return 0, []
        next_cursor, pairs = result
        return int(next_cursor), self._keys(ca, (m for m, _score in pairs))

    # -- locks --------------------------------------------------------------------------------------------

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    async def lock(self, name: str, ttl: float) -> str | None:
        """Take the lock ``name`` for ``ttl`` seconds: its token, or None when another holds it (or
        Redis is down)."""
        token = secrets.token_hex(16)
        ok, taken = await self._call("SET NX", lambda: self.client.set(
            self._lock_key(name), token, nx=True, px=max(1, int(ttl * 1000))))
        return token if ok and taken else None

    async def renew(self, name: str, token: str, ttl: float) -> bool:
        """Extend the lock to ``ttl`` seconds from now; False when it is no longer ours (or Redis is down)."""
        ok, done = await self._call("renew", lambda: self._renew(
            keys=[self._lock_key(name)], args=[token, max(1, int(ttl * 1000))]))
        return bool(ok and done)

    async def unlock(self, name: str, token: str) -> None:
        """Release the lock if it is still ours. Never raises."""
        await self._call("unlock", lambda: self._unlock(keys=[self._lock_key(name)], args=[token]))

    async def close(self) -> None:
        """Wait (briefly) for the background writes, then close the connections."""
        if self._pending:
            try:
                async with asyncio.timeout(max(self.timeout * 4, 0.2)):
                    await self.flush()
            except TimeoutError:
                for task in list(self._pending):
                    task.cancel()
                await asyncio.gather(*list(self._pending), return_exceptions=True)
        try:
            await self.client.aclose()
        except _FAULTS:
            pass


def open_store(config: StoreConfig, **kwargs: Any) -> AnswerStore:
    """An ``AnswerStore`` on a new client for ``config`` (no connection is made until the first
    call). No retries inside redis-py: a failed call is a miss, and the store's backoff decides when
    Redis is asked again."""
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url, max_connections=MAX_CONNECTIONS, timeout=config.timeout,
        socket_timeout=config.timeout, socket_connect_timeout=config.timeout, retry=Retry(NoBackoff(), 0))
    client = aioredis.Redis(connection_pool=pool)
    return AnswerStore(client, prefix=config.prefix, timeout=config.timeout, name=redacted(config.url), **kwargs)


def check_url(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis address (frontend.config's error message), or None."""
    from redis.asyncio.connection import parse_url

    try:
        parsed = parse_url(url)
    except ValueError as e:
        return str(e)
    if url.startswith("unix:") and not parsed.get("path"):
        return "unix:// needs a socket path (unix:///run/redis/redis.sock)"
    if not url.startswith("unix:") and not parsed.get("host"):
        return "needs a host (redis://host:6379/0)"
    return None
