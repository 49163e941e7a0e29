"""Prometheus metrics, one registry per app (so tests can run many apps).

The two per-request series (request count, latency histogram) are kept in
plain dicts by :class:`HttpStats` and turned into Prometheus families only
when ``/metrics`` is scraped: recording a request is two dict updates and a
bisect, not two labelled-child lookups and two locks.  Only the event loop
thread records (the request middleware runs there); a scrape copies the
dicts, which is atomic under the GIL.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HttpStats", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class HttpStats(Collector):
    """``lattice_http_requests_total`` and ``lattice_http_request_duration_seconds``."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._counts: dict[tuple[str, str, str], int] = {}
        # (method, route) -> [per-bucket counts (+Inf last)..., sum]
        self._latency: dict[tuple[str, str], list[float]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        self._counts[key] = self._counts.get(key, 0) + 1
        hist = self._latency.get((method, route))
        if hist is None:
            hist = self._latency[(method, route)] = [0.0] * (len(self.buckets) + 2)
        hist[bisect.bisect_left(self.buckets, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counts = self._counts.copy()
        latency = {k: list(v) for k, v in self._latency.copy().items()}
        total = CounterMetricFamily(
            "lattice_http_requests_total",
            "HTTP requests by method, route template and status",
            labels=["method", "route", "status"],
        )
        for key, n in sorted(counts.items()):
            total.add_metric(list(key), n)
        yield total
        hist = HistogramMetricFamily(
            "lattice_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            labels=["method", "route"],
        )
        bounds = [*(str(float(b)) for b in self.buckets), "+Inf"]
        for pair, values in sorted(latency.items()):
            running = 0.0
            cumulative: list[tuple[str, float]] = []
            for bound, hits in zip(bounds, values[:-1], strict=True):
                running += hits
                cumulative.append((bound, running))
            hist.add_metric(list(pair), cumulative, sum_value=values[-1])
        yield hist


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpStats()
        self.registry.register(self.http)
        self.audit_events = Counter(
            "lattice_audit_events_total",
            "Audit events appended, by action and decision",
            ["action", "decision"],
            registry=self.registry,
        )

    def on_audit(self, action: str, decision: str, count: int = 1) -> None:
        self.audit_events.labels(action, decision).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
