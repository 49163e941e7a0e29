"""Prometheus metrics, one registry per app (so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lattice_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lattice_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
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
