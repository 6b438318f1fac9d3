"""The signer's own copy of each CA's status data, and the check of every job against it before
anything is signed (``[policy] verify_status``; issue 9's defence against a compromised frontend).

Each CA whose ca.d file carries a ``[status]`` table the signer can read gets a status source built by
the frontend's code (``shared.status.config.make_source``): the same parsing, verification,
keep-last-good reloads and change watching (every ``check_interval``, and at once on SIGHUP). Sign
asks ``problem(job)`` after the policy check: ``None`` when every status of the job is what this data
says (``signer.status_check``, a dictionary lookup per status), else the first disagreement. When the
signer's data may be older than the frontend's (``status_check.may_be_older``), the files are checked
for a change once (a stat when nothing changed) and the job judged again before it is refused: a CRL
replaced on disk is read by both halves within their ``check_interval``, and that skew must not turn
into refusals.

A CA without a source at start is not checked (its status files are not on this host: a warning at
start says so); one whose data cannot be used (expired, never loaded) refuses every status, and so
does a CA added by a SIGHUP reload since the start, whose data was never loaded (fail closed: the
signer must be restarted to read a new or changed [status] table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from shared.clock import Clock
from shared.config import ConfigError
from shared.ocsp.errors import TryLater
from shared.ocsp.types import SingleStatus
from shared.status.base import FileStatusSource, Snapshot, StatusDataError
from shared.status.config import make_source
from shared.tasks import cancel_and_wait
from signer.config import SignerConfig
from signer.status_check import check, may_be_older

# For how long after the signer's CRL for a CA was replaced the replaced CRL's window is still signed
# for the serials both CRLs agree on (signer.status_check): a frontend behind by up to a fetch
# interval (status.refresh, 15 min by default) or a file check (status.check_interval) keeps being
# answered instead of getting tryLater for the whole CA.
PREVIOUS_GRACE = 15 * 60.0

if TYPE_CHECKING:  # signer.policy imports grpc, which must not load before signer.handshake_log's set-up
    from signer.policy import SignJob

log = logging.getLogger("ocsp-signer")


@dataclass(slots=True)
class StatusVerifier:
    """Status sources by CA name, their watch tasks, and refusal counts (by CA, for metrics)."""

    sources: dict[str, FileStatusSource]
    clock: Clock
    max_clock_skew: timedelta
    refusals: Counter[str] = field(default_factory=Counter)
    unchecked: frozenset[str] = frozenset()  # CAs configured at start without status data here
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def load(cls, config: SignerConfig, clock: Clock) -> StatusVerifier | None:
        """Build and load every CA's source (blocking: start-up, before serving). None when
        ``policy.verify_status = false``. ConfigError naming the CA file when its data cannot be used;
        an honest frontend refuses the same files at its start."""
        if config.policy.verify_status is False:
            return None
        sources: dict[str, FileStatusSource] = {}
        for rc in config.responders:
            if rc.status is None:
                continue
            source = make_source(rc.name, rc.ca_cert, rc.status, clock)
            try:
                source.load_now()
            except StatusDataError as e:
                raise ConfigError(rc.file, source.config_key, f"{e} (policy.verify_status checks every status "
                                  "against this data)") from None
            sources[rc.name] = source
        unchecked = frozenset(rc.name for rc in config.responders if rc.name not in sources)
        return cls(sources, clock, config.policy.max_clock_skew, unchecked=unchecked)

    def start(self) -> None:
        """Watch the files for changes (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._watchers = [loop.create_task(s.watch(), name=f"status-watch-{name}")
                          for name, s in self.sources.items()]

    async def reload(self) -> None:
        """Re-read every CA's files now (SIGHUP); a file that fails keeps the last good data."""
        await asyncio.gather(*(s.refresh(force=True) for s in self.sources.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in self._watchers:
            await cancel_and_wait(task)
        self._watchers = []

    async def problem(self, job: SignJob) -> str | None:
        """None when the signer's own data agrees with every status in ``job`` (or this CA is not
        checked); else the first disagreement, naming the serial: "serial 1a2b: asked good, ..."."""
        source = self.sources.get(job.responder.name)
        if source is None:
            if job.responder.name in self.unchecked:
                return None
            self.refusals[job.responder.name] += 1
            return (f"CA {job.responder.name!r} was added after the signer started: its status data is not "
                    "loaded (restart the signer to check its statuses)")
        found = self._first_problem(source, job)
        if found is None:
            return None
        snapshot, item, _reason = found
        if snapshot is None or may_be_older(snapshot, item):
            generation = source.generation
            await source.refresh()
            # Newer data, installed by this refresh or by the watch task's one that held the lock
            # meanwhile (this refresh then finds nothing new): judge again.
            if source.generation != generation:
                found = self._first_problem(source, job)
                if found is None:
                    return None
            # A fetched CRL: the watch fetches again soon (bounded), not at its next refresh; not
            # here, where a download would hold this Sign.
            source.catch_up()
        _snapshot, item, reason = found
        self.refusals[job.responder.name] += 1
        return f"serial {item.cert_id.serial.hex()}: {reason}"

    def _first_problem(self, source: FileStatusSource,
                       job: SignJob) -> tuple[Snapshot | None, SingleStatus, str] | None:
        """(the snapshot judged, the first status it disagrees with, why), or None when all agree."""
        try:
            snapshot = source.current()
        except TryLater as e:
            return None, job.statuses[0], f"the signer has no status data for this CA ({e})"
        now = self.clock.now()
        replaced = source.replaced_at
        previous = (source.previous if replaced is not None and time.monotonic() - replaced < PREVIOUS_GRACE
                    else None)
        for item in job.statuses:
            reason = check(snapshot, item, now, self.max_clock_skew, previous)
            if reason is not None:
                return snapshot, item, reason
        return None
