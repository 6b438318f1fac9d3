"""shared.ratelog: one line per interval and key, with the count of what was held back."""

from __future__ import annotations

import logging

import pytest

from shared.ratelog import CountedLog, RateLimitedLog


def test_one_line_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    t = [100.0]
    rl = RateLimitedLog(logging.getLogger("test.ratelog"), 60, lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert rl.log(logging.WARNING, "k", "refused %s", "a") is True
        for _ in range(5):
            t[0] += 1
            assert rl.log(logging.WARNING, "k", "refused %s", "b") is False
        assert rl.log(logging.WARNING, "other", "refused %s", "c") is True  # keys are separate
        t[0] = 160.0
        assert rl.log(logging.WARNING, "k", "refused %s", "d") is True
        t[0] = 300.0
        assert rl.log(logging.WARNING, "k", "refused %s", "e") is True
    assert [r.getMessage() for r in caplog.records] == [
        "refused a", "refused c", "refused d (5 more like it in the last 60 s, not logged)", "refused e"]


def test_keys_are_bounded() -> None:
    rl = RateLimitedLog(logging.getLogger("test.ratelog"), 60, lambda: 0.0, max_keys=3)
    for i in range(100):
        rl.log(logging.DEBUG, i, "x")
    assert len(rl._state) == 3


def _counted(t: list[float]) -> CountedLog:
    return CountedLog(logging.getLogger("test.ratelog"), 5, lambda: t[0], first="refused %d: %s",
                      summary="refused %d in the last %.0f s: %s")


def test_counted_log_one_line_per_interval_and_cause(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    c = _counted(t)
    with caplog.at_level(logging.ERROR, logger="test.ratelog"):
        for i in range(1000):  # 200 a second for 5 s: one line now, the count after the interval
            t[0] = i * 0.005
            c.log(logging.ERROR, "disk full")
        c.log(logging.ERROR, "token gone", 3)
        assert c.due() == pytest.approx(0.005)
        t[0] = 5.0
        c.flush()
        t[0] = 7.0
        c.log(logging.ERROR, "disk full")  # still flooding: counted in the next window
        t[0] = 10.0
        c.flush()
        t[0] = 15.0
        c.flush()  # quiet for a whole interval: forgotten
        assert c.due() is None
        c.log(logging.ERROR, "disk full")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1: disk full", "refused 3: token gone", "refused 999 in the last 5 s: disk full",
        "refused 1 in the last 5 s: disk full", "refused 1: disk full"]
    assert c.total == 1000 + 3 + 1 + 1


def test_counted_log_causes_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    c = CountedLog(logging.getLogger("test.ratelog"), 5, lambda: t[0], first="%d %s", summary="%d %.0f %s",
                   max_keys=2)
    for i in range(50):
        c.log(logging.DEBUG, f"cause {i}")
    assert len(c._windows) == 2


def test_counted_log_schedules_its_own_flush(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    timers: list[tuple[float, object]] = []
    c = CountedLog(logging.getLogger("test.ratelog"), 5, lambda: t[0], first="refused %d: %s",
                   summary="refused %d in the last %.0f s: %s", schedule=lambda d, f: timers.append((d, f)))
    with caplog.at_level(logging.ERROR, logger="test.ratelog"):
        c.log(logging.ERROR, "disk full")
        assert timers == []  # nothing held: nothing to flush
        t[0] = 1.0
        c.log(logging.ERROR, "disk full", 4)
        c.log(logging.ERROR, "disk full")
        assert len(timers) == 1 and timers[0][0] == pytest.approx(4.01)  # one timer, at the window's end
        t[0] = 5.01
        timers.pop()[1]()  # type: ignore[operator]
        assert len(timers) == 1  # the cause is still tracked: one more look after the next window
        t[0] = 10.02
        timers.pop()[1]()  # type: ignore[operator]
        assert timers == [] and c.due() is None
        c.log(logging.ERROR, "token gone")
        c.log(logging.ERROR, "token gone")
        c.close()
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1: disk full", "refused 5 in the last 5 s: disk full", "refused 1: token gone",
        "refused 1 in the last 0 s: token gone"]
