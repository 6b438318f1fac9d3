"""A CA's CRL fetched from where the CA publishes it (``[status] url``), kept in a state directory.

The download (``shared.status.fetch``) lands in a temporary file in ``state_dir``; that file is then
read by ``CrlSource``'s own code, so a fetched CRL goes through exactly what a CRL file does: parsed
and verified against this CA's certificate (in a loader process when big), refused when it would go
back in time or is not yet valid, and only then installed. A good new CRL is renamed over the kept
copy, ``<state_dir>/<CA name>.crl``; a bad, older, wrongly-signed, cut-short or oversized one is
deleted and the last good data stays. At start-up the kept copy is loaded first (the CA's web server
may be down), then one fetch is tried; with neither a good download nor a good kept copy the start
fails (``StatusDataError``, reported as ``status.url``).

Schedule: a fetch every ``refresh``, checked every ``check_interval``; after a failure, again within
``RETRY`` (or ``refresh`` when shorter); as soon as the loaded CRL's nextUpdate has passed; and at
once on ``refresh(force=True)`` (SIGHUP). After ``catch_up()`` (the other half disagreed with our
data: it may have fetched a newer CRL first) the watch fetches again within ``check_interval``, at most
once per ``CATCH_UP_INTERVAL``. Conditional requests: a 304 Not Modified, or a body equal
to the loaded CRL's, keeps the current data and counts as a successful check. A CRL refused once is
asked for with its own ETag/Last-Modified, so a server that keeps publishing it costs a 304, not a
second download (a CRL refused only for being ahead of our clock is fetched again in full).

For metrics and health (plain attributes): ``fetch_failures`` (count), ``fetch_successes`` (count),
``last_fetch_ok`` (epoch seconds of the last successful check, None before one),
``last_fetch_error`` (the cause of the last failure, None once a check succeeds), ``url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509

from shared.clock import Clock
from shared.ratelog import RateLimitedLog
from shared.status.base import NotYetValid, StatusDataError, log
from shared.status.crl import CrlSource
from shared.status.fetch import Fetched, FetchError, Validators, download

RETRY = 60.0  # seconds before a failed fetch is tried again (at most; refresh when shorter)
# After the other half disagreed (catch_up), a fetch at once, but at most once per this many seconds:
# a frontend that lies cannot make the signer hammer the CA's web server.
CATCH_UP_INTERVAL = 10.0
FETCH_LOG_INTERVAL = 300.0  # the same fetch failure is logged at most once per this many seconds
CDP = "cdp"  # status.url = "cdp": the CRL Distribution Points of the CA certificate


def cdp_url(ca: x509.Certificate) -> str | None:
    """The first http(s) URI in the CA certificate's CRL Distribution Points, else None."""
    try:
        points = ca.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                    ("http://", "https://")):
                return name.value
    return None


def kept_path(state_dir: Path, ca_name: str) -> Path:
    return state_dir / f"{ca_name}.crl"


class UrlCrlSource(CrlSource):
    kind = "crl-url"
    config_key = "status.url"

    def __init__(self, name: str, url: str, state_dir: Path, ca_cert_der: bytes, *, unissued: str,
                 issued_serials: Path | None = None, check_interval: float = 5.0, clock: Clock | None = None,
                 max_shrink: float = 0.1, refresh: float = 900.0, timeout: float = 10.0,
                 max_size: int = 64 << 20, ca_bundle: Path | None = None) -> None:
        self.kept = kept_path(state_dir, name)
        super().__init__(name, self.kept, ca_cert_der, unissued=unissued, issued_serials=issued_serials,
                         check_interval=check_interval, clock=clock, max_shrink=max_shrink)
        self.state_dir = state_dir
        self.configured_url = url  # as written: an address, or "cdp"
        self.url: str | None = None if url == CDP else url
        self.refresh_interval = refresh
        self.timeout = timeout
        self.max_size = max_size
        self.ca_bundle = ca_bundle
        self.fetch_failures = 0
        self.fetch_successes = 0
        self.last_fetch_ok: float | None = None
        self.last_fetch_error: str | None = None
        self._validators = Validators()  # of the CRL in use
        self._refused = Validators()  # of the last CRL refused, while it is the one on offer
        self._digest: bytes | None = None  # SHA-256 of the CRL in use
        self._last_attempt: float | None = None  # monotonic
        self._last_attempt_at: datetime | None = None  # wall clock
        self._reading_url = False
        self._catch_up = False
        self._fetch_lock: asyncio.Lock | None = None
        self._fetch_log = RateLimitedLog(log, FETCH_LOG_INTERVAL, time.monotonic)

    # -- naming -----------------------------------------------------------------------------------
    def where(self) -> str:
        if self._reading_url:
            return f"the CRL at {self.url}"
        return f"{self.kept} (the copy kept of {self.url})"

    @property
    def wrong_issuer_hint(self) -> str:  # type: ignore[override]
        if not self._reading_url:
            return ""
        cdp = " (the CA certificate's CRL Distribution Points usually name its issuer's CRL)" \
            if self.configured_url == CDP else ""
        return f"; set status.url to this CA's own CRL{cdp}"

    def describe_files(self) -> str:
        return self.where()

    # -- start-up ---------------------------------------------------------------------------------
    def load_now(self, attempts: int = 10, pause: float = 0.2) -> None:
        """The kept copy (when there is a good one), then one fetch; StatusDataError when neither
        gives a usable CRL."""
        if self.url is None:
            self.url = cdp_url(self.ca)
            if self.url is None:
                raise StatusDataError("status.url = \"cdp\", but the CA certificate has no http(s) URI in its "
                                      "CRL Distribution Points; set status.url to the address of this CA's CRL")
        kept_error = "none is kept there"
        if self.kept.exists():
            try:
                super().load_now(attempts, pause)
                self._digest = _digest_of(self.kept)
            except StatusDataError as e:
                kept_error = str(e)
                log.warning("%s: the CRL kept in %s cannot be used: %s", self.name, self.kept, e)
        self._attempted()
        try:
            fetched = self._download()
        except FetchError as e:
            self._failed(str(e))
            if self._snapshot is None:
                raise StatusDataError(f"cannot fetch the CRL at {self.url}: {e}; and no good copy is kept in "
                                      f"{self.kept} ({kept_error})") from None
            log.warning("%s: fetching %s failed (%s); starting from the copy kept in %s", self.name, self.url,
                        e, self.kept)
            return
        if self._unchanged(fetched):
            return
        assert fetched.path is not None
        try:
            with self._reading(fetched.path):
                super().load_now(attempts, pause)
        except StatusDataError as e:
            _remove(fetched.path)
            self._failed(str(e), logged=True)  # said below, or by the start-up error
            if not isinstance(e, NotYetValid):
                self._refused = fetched.validators
            if self._snapshot is None:
                raise StatusDataError(f"{e}; and no good copy is kept in {self.kept} ({kept_error})") from None
            log.error("%s: the CRL fetched from %s is refused, starting from the copy kept in %s: %s", self.name,
                      self.url, self.kept, e)
            return
        self._keep(fetched)

    # -- running ----------------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> bool:
        """Fetch when due (or ``force``: SIGHUP), and re-read the kept copy and the issued list when
        they changed on disk (as for files); True when new data was installed."""
        if self._fetch_lock is None:
            self._fetch_lock = asyncio.Lock()
        async with self._fetch_lock:
            due = self.url is not None and (force or self.fetch_due())
            if due and await self._fetch_and_install():
                return True
            if self._snapshot is None:
                return False
            files_forced = force and self.issued_path is not None
            if not files_forced and await self._kept_anew():
                return False
            # The kept copy when it changed on disk (another process sharing state_dir kept a newer
            # one), and the issued list as a file (forced: re-read, as SIGHUP does for files).
            installed = await super().refresh(files_forced)
            if installed:  # the kept copy (or the issued list) was read: what we now hold
                self._digest = await asyncio.get_running_loop().run_in_executor(None, _digest_of, self.kept)
            return installed

    async def _kept_anew(self) -> bool:
        """True when the kept copy changed on disk but holds the CRL we have (another process sharing
        state_dir, a frontend worker, kept the same download): noted, not read again. One hash per
        such change, instead of a parse and verify (seconds for a big CRL) in every worker."""
        loop = asyncio.get_running_loop()
        stamps = await loop.run_in_executor(None, self._stamps_now)
        if stamps == self._stamps or stamps[0] is None or stamps[1:] != self._stamps[1:]:
            return False
        if await loop.run_in_executor(None, _digest_of, self.kept) != self._digest:
            return False
        self._stamps = stamps
        return True

    def catch_up(self) -> None:
        self._catch_up = True

    def fetch_due(self) -> bool:
        if self._last_attempt is None:
            return True
        if self._catch_up and time.monotonic() - self._last_attempt >= min(self.refresh_interval, CATCH_UP_INTERVAL):
            return True
        wait = self.refresh_interval if self.last_fetch_error is None else min(self.refresh_interval, RETRY)
        if time.monotonic() - self._last_attempt >= wait:
            return True
        next_update = getattr(self._snapshot, "next_update", None)
        now = self.clock.now()
        return (isinstance(next_update, datetime) and now >= next_update
                and self._last_attempt_at is not None and self._last_attempt_at < next_update)

    async def _fetch_and_install(self) -> bool:
        loop = asyncio.get_running_loop()
        self._attempted()
        try:
            fetched = await loop.run_in_executor(None, self._download)
        except FetchError as e:
            self._failed(str(e))
            return False
        if self._unchanged(fetched):
            return False
        assert fetched.path is not None
        self.last_error = None
        with self._reading(fetched.path):
            installed = await super().refresh(force=True)  # parse, verify, no-rollback, install, log
            retryable = self._failed_stamps is None
        if not installed:
            _remove(fetched.path)
            self._failed(self.last_error or "the CRL was not installed", logged=True)
            if not retryable:
                self._refused = fetched.validators
            return False
        self._keep(fetched)
        return True

    # -- the pieces -------------------------------------------------------------------------------
    def _download(self) -> Fetched:
        assert self.url is not None
        validators = self._refused if self._refused != Validators() else self._validators
        return download(self.url, self.state_dir, validators=validators, timeout=self.timeout,
                        max_size=self.max_size, ca_bundle=self.ca_bundle)

    def _attempted(self) -> None:
        self._catch_up = False
        self._last_attempt = time.monotonic()
        self._last_attempt_at = self.clock.now()

    def _unchanged(self, fetched: Fetched) -> bool:
        """True (and a successful check) when the server still offers the CRL in use; a CRL refused
        before and still on offer is a failure (True too: nothing to read)."""
        if fetched.path is None and self._refused != Validators():
            self._failed(f"still publishing the CRL refused before ({self.last_fetch_error})", logged=False)
            return True
        if fetched.path is not None and (self._digest is None or fetched.digest != self._digest):
            return False
        if fetched.path is not None:
            _remove(fetched.path)
        self._validators = fetched.validators
        self._refused = Validators()
        self._succeeded()
        return True

    def _keep(self, fetched: Fetched) -> None:
        """The fetched CRL is installed: it becomes the kept copy."""
        assert fetched.path is not None
        try:
            os.chmod(fetched.path, 0o644)  # a CRL is public; another user sharing state_dir may read it
            os.replace(fetched.path, self.kept)
        except OSError as e:
            _remove(fetched.path)
            self._fetch_log.log(logging.ERROR, ("keep", str(e)), "%s: cannot keep the fetched CRL as %s (%s): "
                                "answering from it, but a restart will not find it", self.name, self.kept, e)
        self._stamps = self._stamps_now()  # the kept copy is the loaded data: no re-read of it
        self._digest = fetched.digest
        self._validators = fetched.validators
        self._refused = Validators()
        self._succeeded()

    def _succeeded(self) -> None:
        self.fetch_successes += 1
        self.last_fetch_ok = time.time()
        if self.last_fetch_error is not None:
            log.info("%s: fetching %s works again", self.name, self.url)
        self.last_fetch_error = None

    def _failed(self, cause: str, *, logged: bool = False) -> None:
        self.fetch_failures += 1
        self.last_fetch_error = cause
        if not logged:  # a refused CRL was logged by the reload, as a refused file is
            kept = "keeping the last good CRL" if self._snapshot is not None else "no CRL to answer from"
            self._fetch_log.log(logging.ERROR, re.sub(r"\d+", "N", cause), "%s: fetching the CRL at %s FAILED, %s: %s", self.name,
                                self.url, kept, cause)

    @contextlib.contextmanager
    def _reading(self, candidate: Path) -> Iterator[None]:
        """Read ``candidate`` (a download) in place of the kept copy."""
        self.path = candidate
        self.files[0] = candidate
        self._reading_url = True
        try:
            yield
        finally:
            self.path = self.kept
            self.files[0] = self.kept
            self._reading_url = False


def _digest_of(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
