"""Rate-limited logging: a flood of the same event costs one line per interval, with a count.

A refused caller that retries in a loop must not fill the disk or drown other lines; the operator
still learns how many were refused. Time comes from the ``now`` callable the caller passes (e.g.
``time.monotonic``), so shared/ stays clock-free and tests are exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """At most one line per ``interval`` seconds for each key; the next line that gets through says
    how many were held back since the last one. At most ``max_keys`` keys are tracked (the oldest is
    forgotten first), so keys chosen by callers cannot grow memory."""

    def __init__(self, logger: logging.Logger, interval: float, now: Callable[[], float],
                 max_keys: int = 1024) -> None:
        self.logger = logger
        self.interval = interval
        self.now = now
        self.max_keys = max_keys
        self._state: dict[Any, list[float | int]] = {}  # key -> [last emitted at, suppressed since]

    def log(self, level: int, key: Any, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago; True when logged."""
        t = self.now()
        state = self._state.get(key)
        if state is not None and t - state[0] < self.interval:
            state[1] += 1
            return False
        held = int(state[1]) if state is not None else 0
        if state is None and len(self._state) >= self.max_keys:
            self._state.pop(next(iter(self._state)))
        self._state[key] = [t, 0]
        if held:
            msg += " (%d more like it in the last %.0f s, not logged)"
            args = (*args, held, t - float(state[0]))  # type: ignore[index]
        self.logger.log(level, msg, *args)
        return True


class CountedLog:
    """One line per interval for each cause of a flood, with how many it covers.

    The first event of a cause is logged at once; the ones after it are counted, and once ``interval``
    seconds have passed the next event or ``flush()`` logs them in one line: ``summary % (count,
    seconds, cause)``, e.g. "refused 437 signatures in the last 5 s: audit log not writable: No space
    left on device". A flood that goes on costs one line per interval; call ``flush()`` from a timer
    (``due()`` says when) so the count of a flood that stops is logged too. A cause quiet for a whole
    interval is forgotten (its next event is logged at once again). At most ``max_keys`` causes are
    tracked (the oldest is summed up and forgotten first)."""

    def __init__(self, logger: logging.Logger, interval: float, now: Callable[[], float], *,
                 first: str, summary: str, max_keys: int = 64,
                 schedule: Callable[[float, Callable[[], None]], object] | None = None) -> None:
        """``schedule(delay, callback)``: how to call back later (``loop.call_later``); with it the log
        flushes itself when counts are held, without it the caller calls ``flush()``."""
        self.schedule = schedule
        self._timer = False  # a scheduled flush is pending
        self._closed = False
        self.logger = logger
        self.interval = interval
        self.now = now
        self.first = first  # first % (count, cause), e.g. "refused %d signatures: %s"
        self.summary = summary  # summary % (count, seconds, cause)
        self.max_keys = max_keys
        self.total = 0  # events counted, all causes (for a metric)
        self._windows: dict[str, list[Any]] = {}  # cause -> [window start, held count, level]

    def log(self, level: int, cause: str, n: int = 1) -> None:
        """``n`` events of ``cause``: logged now when the cause is new, else counted."""
        self.total += n
        t = self.now()
        w = self._windows.get(cause)
        if w is None:
            if len(self._windows) >= self.max_keys:
                oldest = next(iter(self._windows))
                self._emit(oldest, self._windows.pop(oldest), t)
            self._windows[cause] = [t, 0, level]
            self.logger.log(level, self.first, n, cause)
            return
        if t - w[0] >= self.interval:
            self._emit(cause, w, t)
            w[0], w[1], w[2] = t, 0, level
        w[1] += n
        w[2] = max(w[2], level)
        self._arm()

    def _arm(self) -> None:
        due = self.due()
        if self.schedule is None or self._timer or self._closed or due is None:
            return
        self._timer = True
        self.schedule(due + 0.01, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = False
        if not self._closed:
            self.flush()
            self._arm()

    def close(self) -> None:
        """Log every count still held (at stop) and schedule nothing more."""
        self._closed = True
        t = self.now()
        for cause, w in list(self._windows.items()):
            self._emit(cause, w, t)
        self._windows.clear()

    def due(self) -> float | None:
        """Seconds until ``flush()`` has something to do; None when no cause is tracked."""
        if not self._windows:
            return None
        return max(0.0, min(w[0] for w in self._windows.values()) + self.interval - self.now())

    def flush(self) -> None:
        """Log the held count of every cause whose interval is over; forget a cause with none held."""
        t = self.now()
        for cause, w in list(self._windows.items()):
            if t - w[0] < self.interval:
                continue
            if w[1]:
                self._emit(cause, w, t)
                w[0], w[1] = t, 0
            else:
                del self._windows[cause]

    def _emit(self, cause: str, w: list[Any], t: float) -> None:
        if w[1]:
            self.logger.log(w[2], self.summary, w[1], t - w[0], cause)
