"""What a worker is given: the parts it uses, and nothing else.

The composition root (`Reelserve.worker_parts`) builds this; the worker never sees the root,
the API's operations or its caches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reelserve.metrics import Metrics
from reelserve.net.guard import FetchPolicy
from reelserve.providers.base import Provider
from reelserve.providers.routes import RoutePlan
from reelserve.settings import Settings
from reelserve.storage.base import Storage
from reelserve.store.queue import TaskQueue, TaskRecord
from reelserve.store.usage import UsageStore
from reelserve.store.webhooks import WebhookStore

# The task's JSON as the API answers it (for webhook bodies), given the base URL of its links.
RenderTask = Callable[[TaskRecord, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class WorkerParts:
    settings: Settings
    queue: TaskQueue
    storage: Storage
    providers: Mapping[str, Provider]  # by route name (providers/registry.py)
    routes: RoutePlan  # each model's routes: where a failed-over task goes, what spills
    usage: UsageStore
    webhooks: WebhookStore
    metrics: Metrics
    image_policy: FetchPolicy
    webhook_policy: FetchPolicy
    render_task: RenderTask
