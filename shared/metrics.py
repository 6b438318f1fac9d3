"""Metrics kept as plain Python values on the hot paths, exposed through prometheus-client at scrape time.

Both halves count with ints, dicts and ``Buckets`` (a histogram that is a list of bucket counts and a
sum) where the work happens, and register a ``Collector`` that turns them into metric families only
when ``/metrics`` is read. A prometheus-client ``Counter.inc`` takes a lock (and in multiprocess mode
writes an mmap); ``counts[key] += 1`` costs tens of nanoseconds, which the cache-hit path can afford.

With several worker processes each worker renders its own families, and one process merges them
(``merge``): counters and histograms are summed, gauges are summed unless they describe something
every worker holds a copy of (the same status files, the same responder), which take the maximum.
Sans-IO: text in, text out (the endpoint and the collection are shared.metrics_http's).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

CONTENT_TYPE = CONTENT_TYPE_LATEST  # text/plain; version=0.0.4 (or newer, as the pinned client says)

# Seconds: from 100 µs (a cache hit, a token signature on fast hardware) to 10 s (signer.timeout).
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0, 10.0)
# Requests per SignBatch call (policy.max_batch is at most 1024).
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Buckets:
    """A histogram as plain values: ``counts[i]`` observations in (bounds[i-1], bounds[i]], the last
    one past every bound; ``sum`` of every observation. ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at most le) for each bound and +Inf, as HistogramMetricFamily takes them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else _le(bound), total))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


_Simple = TypeVar("_Simple", CounterMetricFamily, GaugeMetricFamily)


def _family(kind: type[_Simple], name: str, doc: str, labels: Sequence[str],
            values: Mapping[tuple[str, ...], float] | float) -> _Simple:
    """A counter or gauge family: one unlabelled number, or {label values: value}, sorted."""
    if not labels:
        assert not isinstance(values, Mapping)
        return kind(name, doc, value=values)
    family = kind(name, doc, labels=labels)
    assert isinstance(values, Mapping)
    for key, v in sorted(values.items()):
        family.add_metric(list(key), v)
    return family


def counter(name: str, doc: str, labels: Sequence[str], values: Mapping[tuple[str, ...], float] | float
            ) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``) from {label values: count} or one number."""
    return _family(CounterMetricFamily, name, doc, labels, values)


def gauge(name: str, doc: str, labels: Sequence[str], values: Mapping[tuple[str, ...], float] | float
          ) -> GaugeMetricFamily:
    """A gauge family from {label values: value} or one number."""
    return _family(GaugeMetricFamily, name, doc, labels, values)


def histogram(name: str, doc: str, labels: Sequence[str], values: Mapping[tuple[str, ...], Buckets] | Buckets
              ) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    items = sorted(values.items()) if isinstance(values, Mapping) else [((), values)]
    for key, b in items:
        family.add_metric(list(key), b.cumulative(), b.sum)
    return family


class FamiliesCollector(Collector):
    """A Collector whose families ``collect()`` builds at scrape time from plain state."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families())


def registry_of(families: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one, which also reports the process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def merge(texts: Sequence[str], same_everywhere: frozenset[str] = frozenset()) -> list[Metric]:
    """The families of several workers' expositions as one: every sample (name and labels) summed over
    the workers, except in the gauge families named in ``same_everywhere``, where the maximum is kept
    (each worker holds its own copy of the same thing: one sum would count it once per worker)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            take_max = fam.type == "gauge" and fam.name in same_everywhere
            into = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = into.get(key)
                into[key] = s.value if old is None else (max(old, s.value) if take_max else old + s.value)
    out = []
    for name, fam in families.items():
        for (sample, labels), v in values[name].items():
            fam.add_sample(sample, dict(labels), v)
        out.append(fam)
    return out


def render_merged(texts: Sequence[str], same_everywhere: frozenset[str] = frozenset(),
                  extra: Iterable[Metric] = ()) -> bytes:
    merged = [*merge(texts, same_everywhere), *extra]
    return render(registry_of(lambda: merged))
