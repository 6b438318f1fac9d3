"""/-/ready: whether this frontend can answer right now. Load balancers route on it; /-/health stays
liveness (200 while the process serves HTTP).

Ready means both:
- at least one signer answers its Health RPC with ``serving`` (with several addresses, the reason line
  names the ones that do not);
- every CA's status data is loaded and not past its nextUpdate (a CRL's; index.txt data never goes
  stale once loaded).

A background task asks every signer at once every ``[signer] health_interval``, each call with a short
deadline, and keeps the verdict; a status reload re-judges at once. A request to /-/ready only reads
the verdict, so it costs what /-/health costs and never reaches the signer. The answer is 200 ``ready``
or 503 ``not ready: <reason>``, one line naming the signer address or the CA at fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from frontend.signer_client import SignerHealth
from shared.clock import Clock, SystemClock
from shared.status.base import FileStatusSource
from shared.tasks import cancel_and_wait

log = logging.getLogger("frontend.readiness")

READY_PATH = b"/-/ready"
MAX_HEALTH_TIMEOUT = 1.0  # seconds: a signer that needs longer to say it is healthy is not ready
MAX_DETAIL = 200  # characters of one signer's or CA's reason

HealthCheck = Callable[[float], Awaitable[Sequence[SignerHealth]]]


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    reason: str  # one line: "ready", "ready (...)" or "not ready: ..."

    @property
    def status(self) -> int:
        return 200 if self.ready else 503


STARTING = Verdict(False, "not ready: starting (the signer has not been asked yet)")


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def signer_problem(h: SignerHealth) -> str | None:
    """Why this signer cannot sign, or None when it answered serving."""
    if h.serving:
        return None
    return f"signer {h.address}: {one_line(h.detail or 'not serving')}"


def ca_problem(source: FileStatusSource, clock: Clock) -> str | None:
    """Why this CA's status data cannot be answered from, or None (the same test a request applies)."""
    try:
        source.current().window(clock.now())
    except Exception as e:  # noqa: BLE001 - TryLater from current()/window(); anything else is as bad
        text = str(e) or type(e).__name__
        return f"CA {source.name}: {one_line(text.removeprefix(source.name + ': '))}"
    return None


def judge(signers: Sequence[SignerHealth] | None, ca_problems: Sequence[str]) -> Verdict:
    """The verdict from the last Health answers (None: not asked yet) and the CAs' problems."""
    if signers is None:
        return STARTING
    failed = [p for p in map(signer_problem, signers) if p is not None]
    problems = list(ca_problems)
    if len(failed) == len(signers):
        problems.insert(0, "; ".join(failed) if len(failed) == 1 else "no signer answers: " + "; ".join(failed))
    if problems:
        return Verdict(False, "not ready: " + "; ".join(problems))
    if failed:
        return Verdict(True, "ready (" + "; ".join(failed) + ")")
    return Verdict(True, "ready")


class Readiness:
    """Keeps the verdict /-/ready answers with; ``start()`` begins the checks, ``stop()`` ends them."""

    def __init__(self, health: HealthCheck, sources: Sequence[FileStatusSource], *, interval: float,
                 timeout: float, clock: Clock | None = None) -> None:
        self.health = health
        self.sources = list(sources)
        self.interval = interval
        self.timeout = min(timeout, interval, MAX_HEALTH_TIMEOUT)
        self.clock = clock or SystemClock()
        self.verdict = STARTING
        self.checks = 0  # completed signer checks (tests wait on this)
        self._signers: Sequence[SignerHealth] | None = None
        self._task: asyncio.Task[None] | None = None
        for s in self.sources:
            s.on_change(lambda _source: self.judge())

    def answer(self) -> tuple[int, str]:
        """HTTP status and body of /-/ready: the kept verdict, nothing computed."""
        v = self.verdict
        return v.status, v.reason + "\n"

    def judge(self) -> Verdict:
        problems = [p for p in (ca_problem(s, self.clock) for s in self.sources) if p is not None]
        new = judge(self._signers, problems)
        old, self.verdict = self.verdict, new
        if new is not STARTING and (new.ready != old.ready or old is STARTING):
            log.log(logging.INFO if new.ready else logging.WARNING, "/-/ready: %s", new.reason)
        return new

    async def check(self) -> Verdict:
        """Ask every signer (concurrently, each within ``timeout``), then judge."""
        self._signers = list(await self.health(self.timeout))
        self.checks += 1
        return self.judge()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="readiness")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the checks must outlive any single failure
                log.exception("readiness check failed")
            await asyncio.sleep(self.interval)
