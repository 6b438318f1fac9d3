"""Injected time. Code under shared/ never calls datetime.now(); it is given a Clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC datetime, whole seconds."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.fromtimestamp(int(time.time()), UTC)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self._now = start.replace(microsecond=0)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta
