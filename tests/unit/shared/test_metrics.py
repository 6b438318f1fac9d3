"""shared.metrics: the plain-value histogram, families rendered by prometheus-client, and the merge of
several workers' expositions (sums; the maximum for gauges every worker holds a copy of)."""

from __future__ import annotations

import pytest

from shared.metrics import Buckets, counter, gauge, histogram, merge, registry_of, render, render_merged
from tests.metrics_text import value


def test_buckets_are_le_bounds() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        b.observe(v)
    assert b.counts == [2, 2, 1]  # 0.1 itself is in le="0.1"; 3.0 only in +Inf
    assert b.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert b.count == 5 and b.sum == pytest.approx(4.65)


def _text() -> str:
    b = Buckets((0.1, 1.0))
    b.observe(0.5)
    return render(registry_of(lambda: [
        counter("x_requests", "Requests.", ("method",), {("GET",): 2, ("POST",): 1}),
        gauge("x_age_seconds", "Age.", ("ca",), {("a",): 10}),
        gauge("x_in_flight", "In flight.", (), 3),
        histogram("x_seconds", "Latency.", (), b),
    ])).decode()


def test_families_render_as_prometheus_text() -> None:
    text = _text()
    assert "# TYPE x_requests_total counter" in text
    assert value(text, "x_requests_total", method="GET") == 2
    assert value(text, "x_seconds_bucket", le="0.1") == 0
    assert value(text, "x_seconds_bucket", le="1.0") == 1
    assert value(text, "x_seconds_count") == 1 and value(text, "x_seconds_sum") == 0.5


def test_merge_sums_and_keeps_the_max_of_shared_gauges() -> None:
    one = _text()
    two = one.replace('x_age_seconds{ca="a"} 10.0', 'x_age_seconds{ca="a"} 30.0')
    assert two != one
    text = render_merged([one, two], frozenset({"x_age_seconds"})).decode()
    assert value(text, "x_requests_total", method="GET") == 4
    assert value(text, "x_requests_total", method="POST") == 2
    assert value(text, "x_in_flight") == 6  # a gauge not named: summed
    assert value(text, "x_age_seconds", ca="a") == 30  # named: the maximum
    assert value(text, "x_seconds_bucket", le="+Inf") == 2 and value(text, "x_seconds_sum") == 1.0
    assert "# TYPE x_seconds histogram" in text and "# TYPE x_requests_total counter" in text


def test_merge_of_one_is_itself_and_of_none_is_empty() -> None:
    one = _text()
    assert render_merged([one]).decode() == one
    assert merge([]) == []
