"""Prometheus metrics of one process, in a registry of its own (so tests can run many apps).

Counts of tasks come from the store at scrape time (tasks run in other processes too); what only
the process running a task sees (time in queue, run time, upstream errors) is observed where it
happens: a worker process exposes it with `reelserve worker --metrics-port`.

Providers report upstream errors with `reelserve.metrics.upstream_error(provider, code)`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TASK_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
RENEWAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_live: weakref.WeakSet[Metrics] = weakref.WeakSet()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Gauge(
            "reelserve_tasks",
            "Tasks in the store by model and status",
            ["model", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "reelserve_queue_depth",
            "Pending (queued) tasks in the store by model",
            ["model"],
            registry=self.registry,
        )
        self.queue_oldest = Gauge(
            "reelserve_queue_oldest_seconds",
            "Age of the oldest pending task by model (0 when none is pending)",
            ["model"],
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "reelserve_task_queue_seconds",
            "Time from submit to the first claim by a worker, by model",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "reelserve_task_run_seconds",
            "Time from claim to finish of one attempt, by model and outcome "
            "(completed, failed, cancelled, released, lost)",
            ["model", "outcome"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.lease_renewals = Histogram(
            "reelserve_lease_renewal_seconds",
            "Time one renewal of all a worker's leases took (one statement per chunk)",
            buckets=RENEWAL_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "reelserve_upstream_errors",
            "Errors answered by upstream services, by provider and code",
            ["provider", "code"],
            registry=self.registry,
        )
        # Routes (docs/routing.md): a route is one way of serving a model; tasks carry its name.
        self.route_tasks = Gauge(
            "reelserve_route_tasks",
            "Tasks in the store by model, route and status",
            ["model", "route", "status"],
            registry=self.registry,
        )
        self.route_attempts = Counter(
            "reelserve_route_attempts",
            "Attempts at tasks this process ran, by model, route and outcome (completed, "
            "failed, failed_over, cancelled, released, lost)",
            ["model", "route", "outcome"],
            registry=self.registry,
        )
        self.route_errors = Counter(
            "reelserve_route_errors",
            "Tasks this process failed, by model, route and error code",
            ["model", "route", "code"],
            registry=self.registry,
        )
        self.route_failovers = Counter(
            "reelserve_route_failovers",
            "Tasks moved to the next route after a failure before anything was paid, by "
            "model and the routes they left and joined",
            ["model", "from_route", "to_route"],
            registry=self.registry,
        )
        self.route_spills = Counter(
            "reelserve_route_spills",
            "Tasks taken from a route's queue by the next route's workers after its max_wait "
            "(overflow), by model and the routes they left and joined",
            ["model", "from_route", "to_route"],
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "reelserve_event_streams",
            "Open task event streams (GET /v1/tasks/{id}/events) in this process",
            registry=self.registry,
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
        _live.add(self)

    def set_task_stats(
        self,
        counts: Mapping[tuple[str, str], int],
        oldest_pending: Mapping[str, float],
        models: Iterable[str] = (),
        *,
        now: float | None = None,
        routes: Mapping[tuple[str, str, str], int] | None = None,
    ) -> None:
        """Replace the task gauges with a fresh read of the store: `counts` by (model, status),
        the oldest pending task's `created_at` by model. Configured `models` show zeros."""
        now = time.time() if now is None else now
        known = set(models) | {model for model, _ in counts}
        self.tasks.clear()
        self.queue_depth.clear()
        self.queue_oldest.clear()
        for model in known:
            for status in TASK_STATUSES:
                self.tasks.labels(model=model, status=status).set(counts.get((model, status), 0))
            self.queue_depth.labels(model=model).set(counts.get((model, "pending"), 0))
            oldest = oldest_pending.get(model)
            self.queue_oldest.labels(model=model).set(max(0.0, now - oldest) if oldest else 0.0)
        self.route_tasks.clear()
        for (model, route, status), count in (routes or {}).items():
            self.route_tasks.labels(model=model, route=route, status=status).set(count)

    def task_claimed(self, model: str, queued_seconds: float) -> None:
        """A worker claimed a task for the first time, `queued_seconds` after its submit."""
        self.queue_time.labels(model=model).observe(max(0.0, queued_seconds))

    def task_attempt_finished(self, model: str, outcome: str, seconds: float) -> None:
        """One attempt at a task ended (claim to finish) with `outcome`."""
        self.run_time.labels(model=model, outcome=outcome).observe(max(0.0, seconds))

    def lease_renewal(self, seconds: float) -> None:
        """A worker renewed all its leases in `seconds`."""
        self.lease_renewals.observe(max(0.0, seconds))

    def route_attempt(self, model: str, route: str, outcome: str, code: str | None) -> None:
        """One attempt on a route ended with `outcome`; a failed one with error `code`."""
        self.route_attempts.labels(model=model, route=route, outcome=outcome).inc()
        if code is not None:
            self.route_errors.labels(model=model, route=route, code=code[:64]).inc()

    def route_failover(self, model: str, source: str, target: str) -> None:
        self.route_failovers.labels(model=model, from_route=source, to_route=target).inc()

    def route_spill(self, model: str, source: str, target: str) -> None:
        self.route_spills.labels(model=model, from_route=source, to_route=target).inc()

    def upstream_error(self, provider: str, code: str | int) -> None:
        """An upstream service answered an error: `code` is its HTTP status or a short, stable
        error code (keep the set small: it is a label)."""
        self.upstream_errors.labels(provider=provider, code=str(code)[:64]).inc()


def upstream_error(provider: str, code: str | int) -> None:
    """Count an upstream error on every `Metrics` of this process (a server or worker process has
    one). For providers, which do not hold the worker's `Metrics`: call it once per error answer
    from an upstream, e.g. `upstream_error("google_veo", 429)`."""
    for metrics in list(_live):
        metrics.upstream_error(provider, code)
