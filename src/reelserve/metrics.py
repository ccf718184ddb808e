"""Prometheus metrics of one process, in a registry of its own (so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Gauge(
            "reelserve_tasks", "Tasks in the store by status", ["status"], registry=self.registry
        )
        self.http_requests = Counter(
            "reelserve_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "reelserve_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )

    def set_task_counts(self, counts: dict[str, int]) -> None:
        for status in ("pending", "processing", "completed", "failed", "cancelled"):
            self.tasks.labels(status=status).set(counts.get(status, 0))
