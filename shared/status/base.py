"""Per-CA status sources: the common shape, and file watching with keep-last-good reloads.

A source holds one immutable ``Snapshot`` at a time. A request takes the snapshot once and asks it
for every serial and for the validity window, so a multi-CertID answer never mixes two versions of
the data. Lookups are a dict lookup on the serial integer.

Reloading: ``refresh()`` stats the watched files (cheap) and, when one changed (or when forced, as
on SIGHUP), parses them in a worker thread, then swaps the snapshot in one assignment. Big files are
parsed and verified in a loader process of their own (``shared.status.loader``), which hands back
compact tables (``shared.status.table``): the event loop's process never holds millions of objects
nor the GIL for long. A loader process that fails, dies or hangs is a failed reload. A parse that
fails leaves the previous snapshot in place and is logged at ERROR: a broken file never widens
what is answered "good". The files are stat'ed again after the read: when a stamp moved (a file written
in place while we read it, or renamed over), nothing is installed and the next check reads again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.ocsp.errors import TryLater
from shared.ocsp.types import StatusInfo
from shared.ratelog import RateLimitedLog
from shared.status.table import GOOD, UNKNOWN, SerialSet

log = logging.getLogger("ocsp.status")  # both halves: the frontend and the signer load status data

RETRY_LOG_INTERVAL = 60.0  # seconds between two log lines about the same not-yet-valid refusal



class StatusDataError(Exception):
    """A status file that cannot be used; the message is worded for the operator."""


class NotYetValid(StatusDataError):
    """Data that may become usable without changing (a CRL issued ahead of our clock): retried at
    every check instead of waiting for the file to change."""


class LoaderFailed(StatusDataError):
    """The loader process failed, died or timed out: no verdict on the data, tried again at every check
    (at start-up the data is then read in this process)."""


class ChangedWhileRead(StatusDataError):
    """A watched file changed between the stat before the read and the one after: what was read may
    be half old, half new. Not installed; the next check (or, at start-up, a retry) reads it again."""


class Snapshot(ABC):
    """One immutable version of a CA's status data."""

    @abstractmethod
    def status(self, serial: int) -> StatusInfo:
        """Status of one serial number (the CertID serial as a signed integer)."""

    @abstractmethod
    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """(thisUpdate, nextUpdate) of an answer made at ``now``; TryLater when the data is stale."""

    @abstractmethod
    def issued_at(self) -> datetime | None:
        """The time the data itself carries, which every answer from it carries as thisUpdate (a
        CRL's thisUpdate); None when answers take the time they are made (index.txt)."""

    def untimed(self) -> bool:
        """True when some of the data carries no time of its own (index.txt; a CRL's issued-serials
        list): a copy elsewhere may be newer whatever the times say."""
        return self.issued_at() is None

    @abstractmethod
    def listed(self, serial: int) -> bool:
        """True when the data names ``serial`` (issued, or revoked); False when ``status(serial)`` is
        the answer for a serial the data does not know (index.txt: unknown; CRL: ``unissued``)."""

    def interval(self) -> tuple[timedelta, str] | None:
        """nextUpdate - thisUpdate of the answers, and where it comes from (for the operator); None
        when unknown."""
        return None

    @abstractmethod
    def serials(self) -> Iterator[int]:
        """Every serial the data names (``listed``), in no particular order: what pre-signing signs."""

    def count(self) -> int | None:
        """How many serials the data names (the metrics' entries); None when not known cheaply."""
        return None

    def unlisted(self) -> StatusInfo:
        """The answer for a serial the data does not name."""
        return UNKNOWN


def changed_serials(old: Snapshot, new: Snapshot) -> AbstractSet[int] | None:
    """The serials whose answer differs between ``old`` and ``new`` (status or revocation details);
    None when every serial may have changed (the answer for unlisted serials changed). Snapshots of
    tables are compared by a walk of both (``changed_since``); a large result is a compact read-only
    set (``small_set``)."""
    if old.unlisted() != new.unlisted():
        return None
    fast = getattr(new, "changed_since", None)
    found = fast(old) if fast is not None else None
    if found is not None:
        return small_set(found)
    changed = {s for s in new.serials() if old.status(s) != new.status(s)}
    changed.update(s for s in old.serials() if not new.listed(s) and old.status(s) != new.unlisted())
    return changed


__all__ = ["GOOD", "UNKNOWN"]  # (with the names defined here) the good and unknown answers of every source
SMALL_CHANGES = 100_000  # a change set larger than this is a compact SerialSet, not a set of ints


def small_set(serials: list[int] | AbstractSet[int]) -> AbstractSet[int]:
    """``serials`` (sorted, unique, when a list) as a set, or as a compact ``SerialSet`` when large."""
    if isinstance(serials, list) and len(serials) > SMALL_CHANGES:
        return SerialSet.of(serials)
    return set(serials)


FileStamp = tuple[int, int, int, int] | None  # (device, inode, size, mtime_ns); None = missing


def stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileStatusSource(ABC):
    """A source backed by files; subclasses implement ``parse()`` (runs in a worker thread)."""

    kind = "file"
    config_key = "status.path"  # the [status] key a start-up fault names (ConfigError)
    # Files of at least this many bytes (all watched files together) are read by a loader process;
    # None: always in this process.
    loader_min_bytes: int | None = 1 << 20
    loader_timeout = 120.0  # seconds a loader process may take before it is killed (a failed reload)
    loader_command: list[str] | None = None  # the loader's argv (tests); None: shared.status.loader's

    def __init__(self, name: str, files: list[Path], check_interval: float) -> None:
        self.name = name
        self.files = files
        self.check_interval = check_interval
        self.generation = 0  # bumps on every successful reload
        self.reload_failures = 0  # reloads that failed (the last good data kept): for the metrics
        self.loaded_at: float | None = None  # epoch seconds the current data was installed
        self._snapshot: Snapshot | None = None
        # The snapshot the current one replaced, and when (time.monotonic()); None before a reload.
        self.previous: Snapshot | None = None
        self.replaced_at: float | None = None
        self._stamps: list[FileStamp] = []
        self._failed_stamps: list[FileStamp] | None = None
        self._listeners: list[Callable[[FileStatusSource], None]] = []
        self._lock: asyncio.Lock | None = None
        self.last_error: str | None = None
        # Serials whose answer the last reload changed (None: any may have; the first load, or the
        # answer for unlisted serials changed). Set before the listeners are called.
        self.last_changes: AbstractSet[int] | None = None
        # (loaded snapshot, new snapshot, changes) when parse() computed the changes itself
        self._computed: tuple[Snapshot, Snapshot, AbstractSet[int]] | None = None
        self._in_process = False  # set while a start-up load reads in this process (loader failed)
        self._retry_log = RateLimitedLog(log, RETRY_LOG_INTERVAL, time.monotonic)

    # -- subclass hooks ---------------------------------------------------------------------------
    @abstractmethod
    def parse(self) -> Snapshot:
        """Read and check the files; raise StatusDataError (or anything) when unusable."""

    def use_loader(self) -> bool:
        """True when parse() should read the files in a loader process (they are big)."""
        if self._in_process or self.loader_min_bytes is None:
            return False
        size = 0
        for path in self.files:
            try:
                size += os.stat(path).st_size
            except OSError:
                return False  # parse() says why it cannot read it
        return size >= self.loader_min_bytes

    def computed_changes(self, loaded: Snapshot, new: Snapshot, changes: AbstractSet[int]) -> None:
        """parse() found ``changes`` from ``loaded`` to ``new`` (in the loader): refresh() uses them."""
        self._computed = (loaded, new, changes)

    # -- use --------------------------------------------------------------------------------------
    def current(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise TryLater(f"{self.name}: no status data loaded")
        return snap

    def catch_up(self) -> None:
        """The other half disagreed with this data: it may have newer data than ours. Files are
        checked every ``check_interval`` anyway; a fetched CRL is fetched again soon (bounded)."""

    def on_change(self, callback: Callable[[FileStatusSource], None]) -> None:
        """Call ``callback(source)`` after each successful reload (the cache drops this CA)."""
        self._listeners.append(callback)

    # -- loading ----------------------------------------------------------------------------------
    def describe_files(self) -> str:
        """The status data's origin, as log lines name it (the watched files)."""
        return ", ".join(map(str, self.files))

    def _stamps_now(self) -> list[FileStamp]:
        return [stamp(p) for p in self.files]

    def _parse_unchanged(self, stamps: list[FileStamp]) -> Snapshot:
        """``parse()``, then check the files still have the ``stamps`` taken before it (worker thread).
        A parse that failed on a file that changed meanwhile is a torn read too, not a verdict."""
        try:
            snap = self.parse()
        except Exception as e:
            if self._stamps_now() != stamps:
                raise self._changed() from e
            raise
        if self._stamps_now() != stamps:
            raise self._changed()
        return snap

    def _changed(self) -> ChangedWhileRead:
        return ChangedWhileRead(f"{', '.join(map(str, self.files))} changed while being read (written in "
                                "place?); reading again (replace status files atomically: write a "
                                "temporary file, then rename it)")

    def load_now(self, attempts: int = 10, pause: float = 0.2) -> None:
        """Blocking first load (start-up): raises StatusDataError when the data is unusable. A file that
        changes while it is read is read again, up to ``attempts`` times."""
        for attempt in range(attempts):
            stamps = self._stamps_now()
            try:
                snap = self._parse_unchanged(stamps)
            except ChangedWhileRead:
                if attempt + 1 == attempts:
                    raise
                time.sleep(pause)  # the writer is still at it: give it a moment
                continue
            except LoaderFailed as e:
                if self._in_process:
                    raise
                log.warning("%s: %s; reading the status data in this process", self.name, e)
                self._in_process = True
                try:
                    snap = self._parse_unchanged(stamps)
                except ChangedWhileRead:
                    continue
                finally:
                    self._in_process = False
            except StatusDataError:
                raise
            except Exception as e:
                raise StatusDataError(f"{type(e).__name__}: {e}") from e
            self._install(snap, stamps)
            warn_outside_br(self.name, snap)
            return

    def _install(self, snap: Snapshot, stamps: list[FileStamp], changes: AbstractSet[int] | None = None) -> None:
        self.last_changes = changes
        if self._snapshot is not None:  # the data this replaces, and when (signer.status_verify)
            self.previous, self.replaced_at = self._snapshot, time.monotonic()
        self._snapshot = snap
        self._stamps = stamps
        self._failed_stamps = None
        self.last_error = None
        self.loaded_at = time.time()
        self.generation += 1
        for cb in self._listeners:
            try:
                cb(self)
            except Exception:
                log.exception("%s: reload listener failed", self.name)

    async def refresh(self, force: bool = False) -> bool:
        """Re-read the files if they changed (or if ``force``); True when new data was installed."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            stamps = await loop.run_in_executor(None, self._stamps_now)
            if not force and (stamps == self._stamps or stamps == self._failed_stamps):
                return False
            try:
                snap = await loop.run_in_executor(None, self._parse_unchanged, stamps)
            except ChangedWhileRead as e:
                # Not a verdict on the data: nothing is remembered, the next check reads again.
                log.warning("%s: %s", self.name, e)
                return False
            except Exception as e:  # noqa: BLE001 - keep the last good data, whatever went wrong
                retry = isinstance(e, (NotYetValid, LoaderFailed))
                self._failed_stamps = None if retry else stamps
                error = str(e) or type(e).__name__
                self.last_error = error
                self.reload_failures += 1
                kept = ("keeping the last good data" if self._snapshot is not None
                        else "no data to answer from")
                msg = "%s: status reload of %s FAILED, %s: %s"
                args = (self.name, self.describe_files(), kept, error)
                if retry:  # tried again every check: the same refusal at most once a minute
                    self._retry_log.log(logging.ERROR, error, msg, *args)
                else:
                    log.error(msg, *args)
                return False
            old = self._snapshot
            computed, self._computed = self._computed, None
            if old is None:
                changes = None
            elif computed is not None and computed[0] is old and computed[1] is snap:
                changes = computed[2] if old.unlisted() == snap.unlisted() else None
            else:
                changes = await loop.run_in_executor(None, changed_serials, old, snap)
            self._install(snap, stamps, changes)
            log.info("%s: status data reloaded (%s)", self.name, describe(snap))
            if old is None or _length(old) != _length(snap):
                warn_outside_br(self.name, snap)  # said at start-up, and again only when it changes
            return True

    async def watch(self) -> None:
        """Check for changes every ``check_interval`` seconds, forever; warn while the data is stale."""
        last_stale_log = -1e9
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.refresh()
                next_update = getattr(self._snapshot, "next_update", None)
                now = time.monotonic()
                if (isinstance(next_update, datetime) and datetime.now(UTC) >= next_update
                        and now - last_stale_log >= 60):
                    last_stale_log = now
                    log.error("%s: status data expired at %s (nextUpdate passed); answering tryLater "
                              "until %s is replaced", self.name, f"{next_update:%Y-%m-%dT%H:%M:%SZ}",
                              self.describe_files())
            except Exception:
                log.exception("%s: status check failed", self.name)


def describe(snap: Snapshot) -> str:
    text = getattr(snap, "summary", None)
    return text() if callable(text) else type(snap).__name__


# CA/Browser Forum Baseline Requirements 4.9.10: for subscriber certificates, an OCSP response's
# validity interval, "the difference in time between the thisUpdate and nextUpdate field, inclusive"
# (so nextUpdate - thisUpdate + 1 s), must be at least eight hours and at most ten days.
BR_MIN_INTERVAL = timedelta(hours=8)
BR_MAX_INTERVAL = timedelta(days=10)


def br_compliant(window: timedelta) -> bool:
    """True when answers valid for ``window`` (nextUpdate - thisUpdate) meet BR 4.9.10."""
    return BR_MIN_INTERVAL <= window + timedelta(seconds=1) <= BR_MAX_INTERVAL


def warn_outside_br(name: str, snap: Snapshot) -> None:
    known = snap.interval()
    if known is None or br_compliant(known[0]):
        return
    window, source = known
    log.warning("%s: answers are valid for %s (%s), outside the 8h..10d validity interval the CA/Browser "
                "Forum Baseline Requirements (4.9.10, counting thisUpdate..nextUpdate inclusive) require for "
                "publicly-trusted TLS certificates; a private PKI may choose so", name,
                format_duration(window), source)


def _length(snap: Snapshot) -> timedelta | None:
    known = snap.interval()
    return known[0] if known is not None else None


def format_duration(d: timedelta) -> str:
    """'1h', '24h', '7d', '1d 2h 3m 4s'."""
    total = int(d.total_seconds())
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts)


def check_shrink(where: str, what: str, new: int, loaded: int | None, max_shrink: float) -> None:
    """Refuse data that lost more than ``max_shrink`` (a share, 0..1) of the ``loaded`` count: a copy cut
    short at a line boundary looks like a valid file with entries missing. ``loaded`` is None at
    start-up (nothing to compare with: the file is taken as it is)."""
    if loaded is None or loaded <= 0 or new >= loaded:
        return
    lost = loaded - new
    if lost > loaded * max_shrink:
        raise StatusDataError(
            f"{where}: has {new} {what} where the loaded data has {loaded}: {lost / loaded:.0%} fewer, more "
            f"than status.max_shrink ({format_share(max_shrink)}) allows (a copy cut short?). If they "
            "were removed on purpose, restart the frontend or signer reading it (start-up takes the file as "
            "it is) or raise status.max_shrink")


def format_share(share: float) -> str:
    return f"{share * 100:g}%"


def check_stale(name: str, now: datetime, next_update: datetime) -> None:
    if now >= next_update:
        raise TryLater(f"{name}: status data expired at {next_update:%Y-%m-%dT%H:%M:%SZ}")
