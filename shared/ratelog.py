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
