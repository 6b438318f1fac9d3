"""Free space in the audit directory, watched before it runs out (``[audit] min_free``).

The signer refuses to sign what it cannot log (signer.audit fails closed), so a full disk turns into
tryLater for every client. This module warns while there is still room: every
``[audit] space_check_interval`` (and once before the signer serves) it asks the file system how many
bytes the signer's user may still write there (statvfs ``f_bavail``), off the event loop. Below
``min_free``:

- an ERROR line, at most one per ``LOW_LOG_INTERVAL`` (with a count of the checks held back), and an
  INFO line once there is enough room again;
- Health answers not serving, with the reason (``problem()``), so the frontends' /-/ready says 503 and
  load balancers move to another signer before this one has to refuse;
- the metrics ``ocsp_signer_audit_free_bytes`` and ``ocsp_signer_audit_space_low`` (signer.metrics).

Signing goes on meanwhile: refusing early would turn a warning into an outage. When a write does fail,
the audit log's own fail-closed path refuses, as before. A directory whose free space cannot be read
counts as low (the writes there are likely to fail too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.ratelog import RateLimitedLog
from shared.tasks import cancel_and_wait

log = logging.getLogger("ocsp-signer")

LOW_LOG_INTERVAL = 300.0  # seconds between two ERROR lines while space stays low


def format_bytes(n: int) -> str:
    """``1610612736`` -> ``"1.5 GiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class AuditSpace:
    """The last reading of free space in ``directory``; ``check()`` takes a new one (blocking, cheap),
    ``start()`` repeats it every ``interval`` seconds in a task until ``stop()``."""

    def __init__(self, directory: Path, min_free: int, *, interval: float,
                 statvfs: Callable[[Path], Any] = os.statvfs,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.min_free = min_free
        self.interval = interval
        self._statvfs = statvfs
        self.free_bytes: int | None = None  # for the signer's user; None: not read (yet, or it failed)
        self.total_bytes: int | None = None
        self.error: str | None = None  # why the last reading failed
        self.low = False
        self.checks = 0
        self._log = RateLimitedLog(log, LOW_LOG_INTERVAL, monotonic)
        self._task: asyncio.Task[None] | None = None

    def read(self) -> tuple[int | None, int | None, str | None]:
        """(free bytes for the signer's user, size, None) or (None, None, why not). Blocking, never raises."""
        try:
            st = self._statvfs(self.directory)
        except OSError as e:
            return None, None, e.strerror or str(e)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, None

    def check(self) -> bool:
        """Read the free space now (blocking) and apply it. Returns ``low``."""
        return self.apply(self.read())

    def apply(self, reading: tuple[int | None, int | None, str | None]) -> bool:
        """Take a reading (on the event loop); log a change of state. Returns ``low``."""
        free, total, self.error = reading
        self.free_bytes, self.total_bytes = free, total
        self.checks += 1
        was_low = self.low
        self.low = self.min_free > 0 and (free is None or free < self.min_free)
        if self.low:
            self._log.log(logging.ERROR, "low", "audit log directory: %s; the signer still signs, but once the "
                          "disk is full it refuses every request (tryLater) until space is freed. Free space "
                          "there, or give the log a larger file system", self.problem())
        elif was_low:
            log.info("audit log directory %s: %s free again (audit.min_free %s)", self.directory,
                     format_bytes(free or 0), format_bytes(self.min_free))
        return self.low

    def problem(self) -> str | None:
        """Why space is low, one line (Health's detail); None while there is enough."""
        if not self.low:
            return None
        if self.free_bytes is None:
            return f"cannot read the free space of {self.directory}: {self.error}"
        share = f" ({100 * self.free_bytes / self.total_bytes:.1f} % of {format_bytes(self.total_bytes)})" \
            if self.total_bytes else ""
        return (f"{format_bytes(self.free_bytes)} free in {self.directory}{share}, below audit.min_free "
                f"({format_bytes(self.min_free)})")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-space")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            # statvfs is a system call of microseconds on a local disk; on a network file system it
            # may block, so never on the event loop (and not on the one pkcs11 thread either).
            self.apply(await loop.run_in_executor(None, self.read))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
