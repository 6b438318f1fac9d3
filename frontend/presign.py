"""``ocspctl presign``: sign the answer of every known serial of a CA into the fleet's shared store.

RFC 9919's pre-produced responses are the model: an answer does not depend on the request (no nonce),
so it can be signed before anyone asks and served as it is. ``presign`` runs against a running signer
(the frontend's ``[signer]`` table: addresses, mTLS client identity) and the fleet's Redis (``[cache]
redis``); it is a frontend-side tool and holds no key (it imports no signer code, like the rest of
frontend/).

For each serial the CA's status data names (``Snapshot.serials()``: the index.txt lines, or a CRL-backed
CA's issued-serials list and revoked entries), sorted, in chunks of ``--batch``:

- one MGET of the chunk's stored answers (``AnswerStore.get_many``); a serial whose answer is still
  valid for longer than ``--min-remaining`` and says what the status data says is skipped (so a rerun
  goes on where the last one stopped, and signs nothing when nothing is due);
- every other one is signed (a token of ``--rate`` each, at most ``--batch`` in flight: the
  SignerClient puts concurrent signatures into SignBatch calls) and put into the store under its
  AnswerKey until min(nextUpdate, thisUpdate + max_age), indexed for the refresher.

An error of one serial (tryLater, a refusal) is counted and the run goes on; only when the last
``FAIL_LIMIT`` signatures all failed (the signer is down) does it stop, exit status 1. Ctrl-C (or
SIGTERM) stops at once: no new signature is started, those in flight are finished, a summary is
printed (exit status 130). The pieces the frontend's refresher shares (``TokenBucket``,
``sign_and_store``, ``cert_id``) live here too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from frontend.answer_store import AnswerStore, StoreConfig, open_store
from frontend.config import CaConfig, FrontendConfig, load_frontend_config
from frontend.signer_client import Keepalive, SignerClient, SignResult
from shared import logs
from shared.answers import AnswerKey, StoredAnswer, expires_at, serial_octets, stored_answer
from shared.config import ConfigError, parse_duration
from shared.ocsp.certid import issuer_keys
from shared.ocsp.errors import OCSPError
from shared.ocsp.types import CertId, HashAlgorithm, IssuerKey, SingleStatus, StatusInfo
from shared.status.base import Snapshot, StatusDataError
from shared.status.config import make_source

PROG = "ocspctl presign"
DEFAULT_BATCH = 256
FAIL_LIMIT = 256  # this many failed signatures in a row, none signed in between: the run stops
STORE_TIMEOUT = 2.0  # seconds: a bulk tool waits longer for Redis than the request path does
PLAIN_INTERVAL = 10.0  # seconds between two progress lines when stderr is not a terminal
BAR_POSTFIX_INTERVAL = 0.5  # seconds between two updates of the bar's counts


class Signer(Protocol):
    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult: ...


# -- what presign and the refresher share -----------------------------------------------------------------


def cert_id(issuer: IssuerKey, serial: int) -> CertId:
    return CertId(issuer.hash_algorithm, issuer.issuer_name_hash, issuer.issuer_key_hash, serial_octets(serial))


def still_good(old: StoredAnswer, info: StatusInfo, now: float, max_age: float, min_remaining: float) -> bool:
    """A stored answer that need not be signed again: it says what ``info`` says and stays valid for
    longer than ``min_remaining`` seconds."""
    return old.answers(info) and expires_at(old.this_update, old.next_update, max_age) - now > min_remaining


async def sign_and_store(store: AnswerStore, signer: Signer, key: AnswerKey, snapshot: Snapshot, *,
                         max_age: float, wall: Callable[[], float] = time.time) -> tuple[bool, SignResult]:
    """Sign ``key``'s (single-CertID) answer from ``snapshot`` and put it into ``store``: (stored, the
    signer's reply). Not stored: it would expire at once (a CRL older than max_age). Raises OCSPError."""
    cid = key.cert_ids[0]
    info = snapshot.status(cid.serial_int)
    now = wall()
    this_update, next_update = snapshot.window(datetime.fromtimestamp(now, UTC))
    result = await signer.sign([SingleStatus(cert_id=cid, status=info.status, this_update=this_update,
                                             next_update=next_update, revocation=info.revocation)], None)
    tu, nu = int(this_update.timestamp()), int(next_update.timestamp())
    until = expires_at(tu, nu, max_age)
    if until <= wall():
        return False, result
    await store.put(key, stored_answer(result.der, info, tu, nu, int(now), result.responder_fingerprint), until)
    return True, result


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take()`` waits for one. Injectable time."""

    def __init__(self, rate: float, burst: float | None = None, *, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.monotonic = monotonic
        self.sleep = sleep
        self.tokens = self.burst
        self.stamp = monotonic()

    def _fill(self) -> None:
        now = self.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self) -> None:
        while True:
            self._fill()
            if self.tokens >= 1 - 1e-9:  # (float rounding must not leave a waiter sleeping nothing forever)
                self.tokens -= 1
                return
            await self.sleep((1 - self.tokens) / self.rate)


# -- a presign run ---------------------------------------------------------------------------------------------


@dataclass
class Tally:
    total: int = 0
    signed: int = 0
    skipped: int = 0  # still valid for longer than --min-remaining
    unstored: int = 0  # signed, but expired at once (min(nextUpdate, thisUpdate + max_age) already past)
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # failures by kind (TryLater, Unauthorized, ...)
    last_error: str = ""
    fail_run: int = 0  # failures in a row
    aborted: str = ""  # why the run stopped before its end (every signature failing)
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.signed + self.skipped + self.unstored + self.failed


class Progress:
    """A tqdm bar on a terminal; elsewhere (a log, a pipe) a plain line every ``interval`` seconds."""

    def __init__(self, tally: Tally, label: str, stream: IO[str] | None = None, *, tty: bool | None = None,
                 interval: float = PLAIN_INTERVAL, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.tally = tally
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.monotonic = monotonic
        self.started = self.last = monotonic()
        self._shown = 0
        self.bar: Any = None
        if self.stream.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=tally.total, unit="serial", desc=label, file=self.stream, dynamic_ncols=True,
                            smoothing=0.1)

    def update(self) -> None:
        now = self.monotonic()
        if self.bar is not None:
            done = self.tally.done
            self.bar.update(done - self._shown)
            self._shown = done
            if now - self.last >= BAR_POSTFIX_INTERVAL:
                self.last = now
                self.bar.set_postfix(signed=self.tally.signed, skipped=self.tally.skipped,
                                     failed=self.tally.failed, refresh=False)
        elif now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        t = self.tally
        elapsed = max(self.monotonic() - self.started, 1e-9)
        pct = 100.0 * t.done / t.total if t.total else 100.0
        return (f"{self.label}: {t.done}/{t.total} ({pct:.0f}%): signed {t.signed}, skipped {t.skipped}, "
                f"failed {t.failed}; {t.signed / elapsed:.0f} signed/s")

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.set_postfix(signed=self.tally.signed, skipped=self.tally.skipped, failed=self.tally.failed)
            self.bar.close()


class Presigner:
    """Signs one CA's serials into the store (see the module docstring). ``current``: the CA's
    snapshot now (``refresh`` re-reads changed files before each chunk)."""

    def __init__(self, *, store: AnswerStore, signer: Signer, ca: str, issuer: IssuerKey,
                 current: Callable[[], Snapshot], refresh: Callable[[], Any] | None = None, max_age: float,
                 min_remaining: float, batch: int = DEFAULT_BATCH, bucket: TokenBucket | None = None,
                 fail_limit: int = FAIL_LIMIT, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.ca = ca
        self.issuer = issuer
        self.current = current
        self.refresh = refresh
        self.max_age = max_age
        self.min_remaining = min_remaining
        self.batch = max(1, batch)
        self.bucket = bucket
        self.fail_limit = fail_limit
        self.wall = wall
        self.tally = Tally()
        self.stopping = asyncio.Event()
        self.fingerprints: set[str] = set()  # the responders that signed in this run

    def stop(self) -> None:
        """Ctrl-C: start no new signature; those in flight finish."""
        self.tally.interrupted = True
        self.stopping.set()

    def key(self, serial: int) -> AnswerKey:
        return AnswerKey(self.ca, (cert_id(self.issuer, serial),))

    async def run(self, serials: Sequence[int], progress: Progress | None = None) -> Tally:
        tally = self.tally
        tally.total = len(serials)
        slots = asyncio.Semaphore(self.batch)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()
            if progress is not None:
                progress.update()

        try:
            for start in range(0, len(serials), self.batch):
                if self.stopping.is_set():
                    break
                if self.refresh is not None:
                    await self.refresh()
                snapshot = self.current()
                chunk = serials[start:start + self.batch]
                keys = [self.key(s) for s in chunk]
                stored = await self.store.get_many(keys)
                now = self.wall()
                for key, serial, old in zip(keys, chunk, stored, strict=True):
                    if old is not None and still_good(old, snapshot.status(serial), now, self.max_age,
                                                      self.min_remaining):
                        tally.skipped += 1
                        continue
                    await slots.acquire()
                    if self.stopping.is_set():
                        slots.release()
                        break
                    if self.bucket is not None:
                        await self.bucket.take()
                    task = asyncio.get_running_loop().create_task(self._one(key, snapshot))
                    tasks.add(task)
                    task.add_done_callback(done)
                if progress is not None:
                    progress.update()
        finally:
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        return tally

    async def _one(self, key: AnswerKey, snapshot: Snapshot) -> None:
        tally = self.tally
        try:
            stored, result = await sign_and_store(self.store, self.signer, key, snapshot, max_age=self.max_age,
                                                  wall=self.wall)
        except OCSPError as e:
            tally.failed += 1
            tally.errors[type(e).__name__] += 1
            tally.last_error = str(e)
            tally.fail_run += 1
            if tally.fail_run >= self.fail_limit and not self.stopping.is_set():
                tally.aborted = (f"the last {tally.fail_run} signatures all failed (last: {e}); is the signer "
                                 "up and serving this CA?")
                self.stopping.set()
            return
        tally.fail_run = 0
        self.fingerprints.add(result.responder_fingerprint)
        if stored:
            tally.signed += 1
        else:
            tally.unstored += 1


def summary(ca: str, tally: Tally, elapsed: float, min_remaining: float) -> str:
    head = (f"presign {ca}: {tally.total} serials: signed {tally.signed}, skipped {tally.skipped} (valid "
            f"for more than {min_remaining:g}s), failed {tally.failed}; {elapsed:.1f}s, "
            f"{tally.signed / max(elapsed, 1e-9):.0f} signed/s")
    lines = [head]
    if tally.unstored:
        lines.append(f"  {tally.unstored} answers were signed but not stored: they expired at once "
                     "(min(nextUpdate, thisUpdate + max_age) is past: status data older than [cache] max_age?)")
    if tally.failed:
        kinds = ", ".join(f"{k} {n}" for k, n in tally.errors.most_common())
        lines.append(f"  failures: {kinds}; last: {tally.last_error}")
    left = tally.total - tally.done
    if tally.aborted:
        lines.append(f"  stopped: {tally.aborted}")
    elif tally.interrupted:
        lines.append(f"  interrupted with {left} serials not yet done: a rerun goes on from here")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------------------------


def parse_rate(text: str) -> float | None:
    """'500/s' or '500' signatures a second; '0' (or 'unlimited'): no limit."""
    t = text.strip().lower()
    if t in ("0", "unlimited", "none"):
        return None
    t = t.removesuffix("/s")
    try:
        rate = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 500/s") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate must be positive (0: no limit)")
    return rate


def _duration(text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Sign the answer of every known serial of a CA "
                                     "into the fleet's shared answer store ([cache] redis), through a running "
                                     "signer. A rerun skips answers still valid.")
    parser.add_argument("--config", required=True, help="the frontend's frontend.toml ([signer], [cache], ca_dir)")
    parser.add_argument("--ca", required=True, metavar="NAME", help="the CA's name (its ca.d file's name key)")
    parser.add_argument("--hash", default="sha1", choices=[a.value for a in HashAlgorithm],
                        help="the CertID hash algorithm clients use (default: sha1)")
    parser.add_argument("--rate", type=parse_rate, default=None, metavar="N/s",
                        help="signatures per second at most (default: no limit but the signer's pace)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                        help=f"serials per store lookup, and signatures in flight at most (default: {DEFAULT_BATCH})")
    parser.add_argument("--min-remaining", type=_duration, default=None, metavar="DURATION",
                        help="sign again an answer valid for less than this (default: [cache] refresh_before, "
                        "else a quarter of max_age)")
    parser.add_argument("--log-level", choices=logs.LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR: the least severe log lines written to stderr "
                        "(default: ocspctl's --log-level, WARNING)")
    return parser


def pick_ca(cfg: FrontendConfig, name: str) -> CaConfig:
    for ca in cfg.cas:
        if ca.name == name:
            return ca
    known = ", ".join(ca.name for ca in cfg.cas)
    raise ConfigError(cfg.file, "ca_dir", f"no CA named {name!r} in {cfg.ca_dir} (known: {known})")


def load(args: argparse.Namespace) -> tuple[FrontendConfig, CaConfig, StoreConfig]:
    cfg = load_frontend_config(args.config)
    ca = pick_ca(cfg, args.ca)
    store_config = cfg.cache.store_config()
    if store_config is None:
        raise ConfigError(cfg.file, "cache.redis", "presign writes to the fleet's shared answer store: set "
                          "[cache] redis")
    algorithm = HashAlgorithm(args.hash)
    if algorithm not in cfg.listen.allowed_hashes:
        raise ConfigError(cfg.file, "listen.allowed_hashes", f"does not include {algorithm.value}: the frontends "
                          "would not serve what presign signs")
    store_config = StoreConfig(store_config.url, prefix=store_config.prefix,
                               timeout=max(store_config.timeout, STORE_TIMEOUT))
    return cfg, ca, store_config


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


async def presign(args: argparse.Namespace, cfg: FrontendConfig, ca: CaConfig, store_config: StoreConfig) -> int:
    source = make_source(ca.name, ca.ca_cert_der, ca.status)
    try:
        await asyncio.get_running_loop().run_in_executor(None, source.load_now)
    except StatusDataError as e:
        raise ConfigError(ca.file, "status.path", str(e)) from None
    serials = sorted(source.current().serials())
    issuer = issuer_keys(ca.ca_cert_der)[HashAlgorithm(args.hash)]
    max_age = cfg.cache.max_age.total_seconds()
    min_remaining = args.min_remaining
    if min_remaining is None:
        min_remaining = cfg.cache.refresh_window() or max_age / 4
    s = cfg.signer
    client = SignerClient(s.addresses, s.timeout, tls=s.tls, keepalive=Keepalive(s.keepalive, s.keepalive_timeout),
                          max_batch=s.max_batch, connections=s.connections)
    store = open_store(store_config)
    try:
        health = await client.health()
        if not any(h.serving for h in health):
            _warn("no signer is serving: " + "; ".join(f"{h.address}: {h.detail}" for h in health))
            return 1
        await store.due(ca.name, 0, 1)
        if not store.available:
            _warn(f"Redis {store.name} does not answer ({cfg.file}: cache.redis)")
            return 1
        presigner = Presigner(store=store, signer=client, ca=ca.name, issuer=issuer, current=source.current,
                              refresh=source.refresh, max_age=max_age, min_remaining=min_remaining,
                              batch=args.batch, bucket=TokenBucket(args.rate) if args.rate else None)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, presigner.stop)
        rate = f"at most {args.rate:g}/s" if args.rate else "as fast as the signer signs"
        _say(f"presign {ca.name}: {len(serials)} serials ({args.hash} CertIDs), {rate}, into Redis {store.name}")
        started = time.monotonic()
        progress = Progress(presigner.tally, f"presign {ca.name}")
        try:
            tally = await presigner.run(serials, progress)
        finally:
            progress.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if not store.available:
            tally.aborted = tally.aborted or f"Redis {store.name} stopped answering: answers may be missing"
        _say(summary(ca.name, tally, time.monotonic() - started, min_remaining))
        if tally.interrupted and not tally.aborted:
            return 130
        return 1 if tally.failed or tally.aborted else 0
    finally:
        await store.close()
        await client.close()


def presign_main(argv: Iterable[str]) -> int:
    """``ocspctl presign ...``: the exit status (0: every serial stored or still valid; 1: failures,
    a config fault, no signer or no Redis; 130: interrupted; 2: usage)."""
    args = build_parser().parse_args(list(argv))
    logs.setup(PROG, args.log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel()))
    if args.batch < 1:
        _warn("--batch must be at least 1")
        return 2
    try:
        cfg, ca, store_config = load(args)
        logs.set_format(cfg.log.format)
        return asyncio.run(presign(args, cfg, ca, store_config))
    except ConfigError as e:
        _warn(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
