"""A model's routes as this process sees them (docs/routing.md).

A model is served by one or more routes, in order (`ModelEntry.resolved_routes`). The plan
answers three questions, the same way in the API and in the worker:

- `choose`: the route a new task is queued on: the first route that runs here (or on workers
  elsewhere, `remote_providers`) and whose provider admits the request exactly as asked; where
  that route and the ones right after it have weights, new tasks are dealt among those that
  admit it in proportion to their weights (smooth weighted round-robin, so the split holds
  over any run of submits, not only on average).
- `next_after`: where a task goes when its route failed before anything was paid upstream
  (`ProviderError.failover`): the next route in order that runs and admits it; never back.
- `spills`: which queues overflow into which: a task pending on a route with `max_wait` longer
  than that may be claimed by the workers of the model's next route (store/task_claims.py).

A task row's `provider` column holds its route's name, which is also the key of the provider
that runs it (`build_providers`), so claims and the answers' `route` need nothing more.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import TEST_KEYS_ROUTE, ModelEntry, Route
from reelserve.domain.spec import GenerationSpec
from reelserve.providers.base import Capabilities
from reelserve.store.task_claims import SpillClaim


class NoRoute(Exception):
    """No route of the model runs on this server or on workers it knows of."""


class RoutePlan:
    def __init__(
        self,
        models: Mapping[str, ModelEntry],
        capabilities: Mapping[str, Capabilities],
        runnable: Callable[[Route], bool],
    ) -> None:
        self.routes: dict[str, list[Route]] = {
            model_id: entry.resolved_routes() for model_id, entry in models.items()
        }
        self.capabilities = capabilities
        self.runnable = runnable
        # The provider type of every route name, for worker filters and metrics.
        self.kinds: dict[str, str] = {
            route.name: route.provider for routes in self.routes.values() for route in routes
        }
        self._credit: dict[tuple[str, str], float] = {}  # smooth weighted round-robin
        self._lock = threading.Lock()

    def routes_of(self, model: str) -> list[Route]:
        return self.routes.get(model, [])

    def has_next(self, model: str, name: str) -> bool:
        """The model has a route after `name` that runs (the failover's target, if it admits
        the task)."""
        if name == TEST_KEYS_ROUTE:
            return False  # a test key's task never leaves the sandbox
        routes = self.routes_of(model)
        index = next((r.index for r in routes if r.name == name), None)
        return index is not None and any(self.runnable(r) for r in routes[index + 1 :])

    def choose(self, spec: GenerationSpec, *, deal: bool = True) -> Route:
        """The route a new task of `spec` is queued on (the module docstring). Raises
        `NoRoute` when none runs, or the first route's refusal (a 400 naming the field) when
        every route that runs refuses the request. `deal=False` (an estimate) only looks:
        the weighted deal stays where it is."""
        routes = [r for r in self.routes_of(spec.model) if self.runnable(r)]
        if not routes:
            raise NoRoute(spec.model)
        admitted: list[Route] = []
        refusal: InvalidRequest | None = None
        for route in routes:
            try:
                self._admit(route, spec)
            except InvalidRequest as exc:
                refusal = refusal or exc
                continue
            admitted.append(route)
            if route.weight is None:
                break  # a route without a weight is taken whole: the later ones wait
        if not admitted:
            assert refusal is not None
            raise refusal
        group: list[Route] = []
        for route in admitted:  # the run of weighted routes at the front
            if route.weight is None:
                break
            group.append(route)
        if len(group) < 2:
            return admitted[0]
        return self._deal(spec.model, group, deal)

    def next_after(self, model: str, name: str, spec: GenerationSpec) -> Route | None:
        """The route a task failed over from `name` goes to: the next one in order that runs
        and admits it, or None."""
        routes = self.routes_of(model)
        index = next((r.index for r in routes if r.name == name), None)
        if index is None or name == TEST_KEYS_ROUTE:
            return None
        for route in routes[index + 1 :]:
            if not self.runnable(route):
                continue
            try:
                self._admit(route, spec)
            except InvalidRequest:
                continue
            return route
        return None

    def admits(self, name: str, spec: GenerationSpec) -> bool:
        """Whether the route `name` serves `spec` exactly as asked (a spilled task's check)."""
        route = next((r for r in self.routes_of(spec.model) if r.name == name), None)
        if route is None:
            return False
        try:
            self._admit(route, spec)
        except InvalidRequest:
            return False
        return True

    def spills(self) -> list[SpillClaim]:
        """Every overflow of one route's queue into the next route's workers."""
        out: list[SpillClaim] = []
        for model, routes in self.routes.items():
            for route, after in itertools.pairwise(routes):
                if route.max_wait is not None and route.name != TEST_KEYS_ROUTE:
                    out.append(SpillClaim(model, route.name, after.name, route.max_wait))
        return out

    def _admit(self, route: Route, spec: GenerationSpec) -> None:
        found = self.capabilities.get(route.name)
        if found is not None:
            found.admit(spec)

    def _deal(self, model: str, group: list[Route], deal: bool) -> Route:
        """Smooth weighted round-robin: every route gains its weight, the richest is taken
        and pays the total (only looked at, without `deal`)."""
        total = sum(float(r.weight or 0) for r in group)
        with self._lock:
            credit = {
                r.name: self._credit.get((model, r.name), 0.0) + float(r.weight or 0) for r in group
            }
            best = max(group, key=lambda r: (credit[r.name], -r.index))
            if deal:
                credit[best.name] -= total
                for name, value in credit.items():
                    self._credit[(model, name)] = value
        return best
