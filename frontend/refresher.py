"""The refresher: stored answers (frontend.answer_store) signed again before they expire, and after a rotation.

Runs in the frontend when ``[cache] redis`` is set and ``[cache] refresh_before`` is not 0 (default: a
quarter of ``max_age``). One frontend of the fleet refreshes a CA at a time: the one holding the Redis
lock ``<prefix>lock:refresh:<ca>`` (taken with SET NX PX ``lock_ttl``, renewed every third of it while
held, released with a token-checked delete on stop). A frontend that dies stops renewing: the lock
lapses within ``lock_ttl`` and another one's next attempt (every ``tick``) takes it. In a frontend with
several workers each worker runs one; the lock leaves the work to one of them.

The holder of a CA's lock, every tick:

- a rotation first: when the responders signing for the CA (learnt from the Watch stream,
  ``note_responder``, and from its own SignReplies) are not the ones it last swept for, it walks the
  CA's refresh index (``members``, one ZSCAN page at a time, ``get_many`` per page) and signs again
  every stored answer signed by another responder;
- then the due entries: ``due(ca, before, chunk)`` with ``before`` = now + ``refresh_before``, but never
  past the expiry a new signature would get (min(nextUpdate, thisUpdate + max_age) of the CA's data now:
  a CRL-backed answer cannot outlive its CRL, so signing it again before a new CRL gains nothing). An
  index member whose answer is gone (it expired, or a status change deleted it) is removed, not signed.

Every answer is signed from the frontend's current status data (``presign.sign_and_store``), at most
``refresh_rate`` signatures a second over all CAs (a token bucket) and at most ``max_in_flight // SHARE``
at once, next to (not counted in) the live path's ``signer.max_in_flight``: the refresher never holds
more than that share of the signatures in flight, so live requests keep their latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from frontend.answer_store import AnswerStore, StoreConfig, open_store
from frontend.config import FrontendConfig
from frontend.presign import Signer, TokenBucket, expires_at, sign_and_store
from shared.answers import AnswerKey, StoredAnswer
from shared.ocsp.errors import OCSPError, TryLater
from shared.ratelog import RateLimitedLog
from shared.status.base import FileStatusSource
from shared.tasks import cancel_all

log = logging.getLogger("frontend.refresher")

LOCK_TTL = 30.0  # seconds a refresh lock lasts unrenewed (how long a dead holder keeps the work)
TICK = 1.0  # seconds between two looks at a CA's due entries (and tries for a lock held elsewhere)
CHUNK = 256  # index entries per due / members step
SHARE = 8  # the refresher's signatures in flight: at most signer.max_in_flight // SHARE
LOG_INTERVAL = 30.0


def lock_name(ca: str) -> str:
    """The lock's name for AnswerStore.lock (the store adds ``<prefix>lock:``)."""
    return f"refresh:{ca}"


class Refresher:
    """See the module docstring. ``sources``: CA name -> its status source (the frontend's own)."""

    def __init__(self, store: AnswerStore, signer: Signer, sources: Mapping[str, FileStatusSource], *,
                 max_age: float, refresh_before: float, rate: float, max_in_flight: int,
                 lock_ttl: float = LOCK_TTL, tick: float = TICK, chunk: int = CHUNK,
                 bucket: TokenBucket | None = None, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, close_store: bool = False) -> None:
        self.store = store
        self.close_store = close_store
        self.signer = signer
        self.sources = dict(sources)
        self.max_age = max_age
        self.refresh_before = refresh_before
        self.lock_ttl = lock_ttl
        self.tick = tick
        # A step's signatures take chunk / rate seconds: well within the lock's renewal period.
        self.chunk = max(1, min(chunk, int(rate * lock_ttl / 4)))
        self.bucket = bucket or TokenBucket(rate)
        self.wall = wall
        self.monotonic = monotonic
        self.slots = asyncio.Semaphore(max(1, max_in_flight // SHARE))
        self.fingerprints: dict[str, dict[str, str]] = {}  # CA -> signer address -> its responder's fingerprint
        self.swept: dict[str, frozenset[str]] = {}  # CA -> the responders its last rotation sweep kept
        self.tokens: dict[str, str] = {}  # CA -> our lock token, while we hold it
        self._renewed: dict[str, float] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ratelog = RateLimitedLog(log, LOG_INTERVAL, monotonic)
        # Counts (tests, logs): answers signed again because due, because of a rotation; members
        # dropped (their answer gone); signatures that failed.
        self.refreshed = 0
        self.rotated = 0
        self.dropped = 0
        self.failed = 0

    # -- what the frontend tells it ---------------------------------------------------------------------

    def note_responder(self, ca: str, fingerprint: str, signer: str = "") -> None:
        """The responder signing for ``ca`` at the signer ``signer`` (a Watch event, a SignReply)."""
        if ca not in self.sources or not fingerprint:
            return
        per = self.fingerprints.setdefault(ca, {})
        if per.get(signer) != fingerprint:
            per[signer] = fingerprint
            self._event(ca).set()

    def current(self, ca: str) -> frozenset[str]:
        return frozenset(self.fingerprints.get(ca, {}).values())

    def _event(self, ca: str) -> asyncio.Event:
        ev = self._wake.get(ca)
        if ev is None:
            ev = self._wake[ca] = asyncio.Event()
        return ev

    # -- the lock ----------------------------------------------------------------------------------------------

    async def hold(self, ca: str) -> bool:
        """True while we hold ``ca``'s lock: taken if free, renewed once a third of its TTL has passed."""
        token = self.tokens.get(ca)
        name = lock_name(ca)
        if token is not None:
            if self.monotonic() - self._renewed[ca] < self.lock_ttl / 3:
                return True
            if await self.store.renew(name, token, self.lock_ttl):
                self._renewed[ca] = self.monotonic()
                return True
            del self.tokens[ca]
            log.warning("refresh lock of %s lost (it lapsed, or Redis is unavailable): another frontend may "
                        "refresh it now", ca)
            return False
        token = await self.store.lock(name, self.lock_ttl)
        if token is None:
            return False
        self.tokens[ca] = token
        self._renewed[ca] = self.monotonic()
        log.info("refreshing the stored answers of %s (this frontend holds its refresh lock)", ca)
        return True

    async def release(self) -> None:
        for ca, token in list(self.tokens.items()):
            await self.store.unlock(lock_name(ca), token)
        self.tokens.clear()

    # -- the work --------------------------------------------------------------------------------------------------

    async def resign(self, ca: str, keys: list[AnswerKey], *, why: str = "due") -> int:
        """Sign ``keys`` again from ``ca``'s status data now (rate-limited, bounded in flight); the
        number signed and stored."""
        source = self.sources[ca]
        tasks: list[asyncio.Task[bool]] = []
        try:
            for key in keys:
                await self.bucket.take()
                await self.slots.acquire()
                tasks.append(asyncio.get_running_loop().create_task(self._one(source, key)))
            results = await asyncio.gather(*tasks)
        except BaseException:
            await cancel_all(tasks)  # type: ignore[arg-type]
            raise
        n = sum(results)
        if why == "rotation":
            self.rotated += n
        else:
            self.refreshed += n
        return n

    async def _one(self, source: FileStatusSource, key: AnswerKey) -> bool:
        try:
            stored, result = await sign_and_store(self.store, self.signer, key, source.current(),
                                                  max_age=self.max_age, wall=self.wall)
        except OCSPError as e:
            self.failed += 1
            self._ratelog.log(logging.WARNING, "sign", "refresher: signing %s again failed (%s); it is tried "
                              "again while it is due", key.ca, e)
            return False
        finally:
            self.slots.release()
        self.note_responder(key.ca, result.responder_fingerprint, result.signer)
        return stored

    def due_before(self, ca: str) -> float | None:
        """The ``before`` of a due query now: now + refresh_before, but before the expiry a new
        signature would get; None when the CA's data gives no answer now (stale)."""
        now = self.wall()
        try:
            tu, nu = self.sources[ca].current().window(datetime.fromtimestamp(now, UTC))
        except TryLater:
            return None
        fresh = expires_at(int(tu.timestamp()), int(nu.timestamp()), self.max_age)
        return min(now + self.refresh_before, fresh - 1)

    async def refresh_due(self, ca: str) -> int:
        """One step: up to ``chunk`` due entries signed again (gone ones dropped); entries looked at."""
        before = self.due_before(ca)
        if before is None:
            return 0
        keys = await self.store.due(ca, before, self.chunk)
        if not keys:
            return 0
        stored = await self.store.get_many(keys)
        if not self.store.available:
            return 0
        gone = [k for k, s in zip(keys, stored, strict=True) if s is None]
        if gone:
            await self.store.delete(gone)
            self.dropped += len(gone)
        signed = await self.resign(ca, [k for k, s in zip(keys, stored, strict=True) if s is not None])
        if signed == 0 and not gone:
            return 0  # nothing came of it (the signer refusing): wait a tick before asking again
        return len(keys)

    def stale(self, ca: str, keys: list[AnswerKey], stored: list[StoredAnswer | None],
              current: frozenset[str]) -> list[AnswerKey]:
        """The keys whose stored answer was signed by a responder not in ``current``."""
        return [k for k, s in zip(keys, stored, strict=True)
                if s is not None and s.responder_fingerprint not in current]

    async def sweep_rotation(self, ca: str) -> int:
        """After a responder change: every stored answer of ``ca`` signed by another responder signed
        again; the number signed. Nothing when the responders are unknown or already swept for."""
        current = self.current(ca)
        if not current or self.swept.get(ca) == current:
            return 0
        log.info("refresher: the responder of %s changed: signing again its stored answers of other responders", ca)
        total = 0
        cursor = 0
        while True:
            if not await self.hold(ca):
                return total  # another frontend goes on (it sweeps for the same change)
            cursor, keys = await self.store.members(ca, cursor, self.chunk)
            if keys:
                stored = await self.store.get_many(keys)
                total += await self.resign(ca, self.stale(ca, keys, stored, current), why="rotation")
            if not self.store.available:
                return total  # swept again once Redis answers
            if self.current(ca) != current:
                return total  # another change meanwhile: the next tick starts over for it
            if cursor == 0:
                break
        self.swept[ca] = current
        log.info("refresher: %s: %d stored answers signed again after the responder change", ca, total)
        return total

    async def step(self, ca: str) -> bool:
        """One tick's work on ``ca``; True when there may be more right away."""
        if not await self.hold(ca):
            return False
        await self.sweep_rotation(ca)
        return await self.refresh_due(ca) > 0

    async def _run(self, ca: str) -> None:
        wake = self._event(ca)
        while True:
            try:
                more = await self.step(ca)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refresher: %s", ca)
                more = False
            if more:
                continue
            wake.clear()
            try:
                async with asyncio.timeout(self.tick):
                    await wake.wait()
            except TimeoutError:
                pass

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(ca), name=f"refresh-{ca}") for ca in self.sources]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        await self.release()
        if self.close_store:
            await self.store.close()


def make_refresher(cfg: FrontendConfig, signer: Signer,
                   sources: Mapping[str, FileStatusSource]) -> Refresher | None:
    """The frontend's refresher for ``cfg``, on a store of its own (its own connections, and a longer
    timeout than the request path's: nobody waits for it), closed by ``stop``; None without
    ``[cache] redis`` or with ``refresh_before`` 0."""
    store_config = cfg.cache.store_config()
    window = cfg.cache.refresh_window()
    if store_config is None or window <= 0:
        return None
    store = open_store(StoreConfig(store_config.url, prefix=store_config.prefix,
                                   timeout=max(store_config.timeout, 1.0)))
    return Refresher(store, signer, sources, max_age=cfg.cache.max_age.total_seconds(), refresh_before=window,
                     rate=cfg.cache.refresh_rate, max_in_flight=cfg.signer.max_in_flight, close_store=True)
