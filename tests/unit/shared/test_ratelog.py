"""shared.ratelog: one line per interval and key, with the count of what was held back."""

from __future__ import annotations

import logging

import pytest

from shared.ratelog import RateLimitedLog


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
