"""The task operations the routes call: submit, get, list, cancel, delete, and the task's view.

Every operation takes the caller's key and typed values (the routes parse query strings); a task
of another key is answered as if it did not exist; an admin key has no tasks (a 403,
`core/limits.py`). A submit is held to the key's limits. A finished task never changes, so its
view is kept for a short while and repeated polls of it cost no database read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from reelserve.core.admission import Admission, Admitted
from reelserve.core.files import Files
from reelserve.core.limits import (
    SubmitLimits,
    affordable,
    check_model,
    payment_required,
    require_tenant,
)
from reelserve.core.pricing import Pricing
from reelserve.core.usage import balance_json
from reelserve.core.views import delivery_json, task_json
from reelserve.domain.errors import Conflict, InvalidRequest, NotFound
from reelserve.domain.ids import task_id as new_task_id
from reelserve.domain.result import TaskView
from reelserve.domain.task import TaskStatus
from reelserve.storage.base import Storage
from reelserve.store.keys import ApiKey
from reelserve.store.ledger import InsufficientBalance, LedgerStore, Reservation
from reelserve.store.queue import CancelOutcome, IdempotencyConflict, TaskQueue
from reelserve.store.task_rows import TaskRecord
from reelserve.store.webhooks import WebhookStore

MAX_LIST_LIMIT = 100
MAX_IDEMPOTENCY_KEY = 255
FINISHED_VIEW_CACHE_SECONDS = 30.0
FINISHED_VIEW_CACHE_SIZE = 10_000


def request_hash(body: object) -> str:
    """What an `Idempotency-Key` is bound to: the body, whatever its members' order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Tasks:
    def __init__(
        self,
        *,
        queue: TaskQueue,
        webhooks: WebhookStore,
        storage: Storage,
        admission: Admission,
        files: Files,
        limits: SubmitLimits,
    ) -> None:
        self.queue = queue
        self.limits = limits
        self.webhooks = webhooks
        self.storage = storage
        self.admission = admission
        self.files = files
        self.pricing = Pricing(admission.models, admission.settings.google)
        self.ledger = LedgerStore(queue.engine)
        self._submit_listeners: list[Callable[[], None]] = []
        # (key id, task id, base URL) -> (monotonic expiry, view)
        self._finished: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any]]] = (
            OrderedDict()
        )

    def on_submit(self, listener: Callable[[], None]) -> None:
        """Called after each submit in this process (the in-process worker wakes at once)."""
        self._submit_listeners.append(listener)

    async def submit(
        self,
        key: ApiKey,
        body: object,
        *,
        idempotency_key: str | None = None,
        base_url: str = "",
    ) -> TaskRecord:
        """Queue a generation, reserving its estimated cost on the ledger (a 402 when the key's
        budget cannot cover it). `base_url` (the URL the request came to) is kept for the file
        links of the task's webhook when `public_url` is not set."""
        admitted = await self._admit(key, body)
        spec = admitted.spec
        estimate = self.pricing.estimate(spec)
        reservation = Reservation(
            amount=estimate.amount,
            currency=estimate.currency,
            model=spec.model,
            samples=spec.sample_count,
            test=key.is_test,
        )
        task_id = new_task_id()
        also_insert = []
        if spec.webhook_url is not None:
            also_insert.append(
                self.webhooks.insert_delivery(
                    task_id=task_id, api_key_id=key.id, url=spec.webhook_url, base_url=base_url
                )
            )
        bound_to = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
                raise InvalidRequest(
                    f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                    param="Idempotency-Key",
                )
            bound_to = request_hash(body)
        try:
            async with self.limits.admit(key, spec.model, idempotency_key):
                task, created = await self.queue.submit(
                    task_id=task_id,
                    api_key_id=key.id,
                    model=spec.model,
                    provider=admitted.provider,
                    spec=spec.model_dump(mode="json"),
                    estimated_time=admitted.entry.estimated_time,
                    idempotency_key=idempotency_key,
                    request_hash=bound_to,
                    also_insert=also_insert,
                    reservation=reservation,
                    check_budget=key.limits.budget is not None,
                )
        except InsufficientBalance as exc:
            raise payment_required(exc.estimate, exc.balance) from None
        except IdempotencyConflict as exc:
            raise Conflict(
                f"Idempotency-Key was already used with a different request (task {exc.task.id})",
                param="Idempotency-Key",
            ) from None
        if created:
            for listener in self._submit_listeners:
                listener()
        return task

    async def _admit(self, key: ApiKey, body: object, *, deal: bool = True) -> Admitted:
        require_tenant(key)
        named = body.get("model") if isinstance(body, dict) else None
        if isinstance(named, str) and named in self.admission.models:
            check_model(key, named)  # a 403 before any check of what the model can do
        return await self.admission.admit(key, body, deal=deal)

    async def estimate(self, key: ApiKey, body: object) -> dict[str, Any]:
        """`POST /v1/videos/estimates`: what a submit of `body` would reserve, and whether the
        key can afford it now. Checked exactly as a submit is (the same errors); queues and
        reserves nothing, and is not a submit for the rate limit."""
        admitted = await self._admit(key, body, deal=False)
        check_model(key, admitted.spec.model)
        estimate = self.pricing.estimate(admitted.spec)
        balance = await self.ledger.balance(key.id, estimate.currency)
        return {
            "object": "estimate",
            "model": admitted.spec.model,
            "estimated_cost": estimate.amount,
            "currency": estimate.currency,
            "test": key.is_test,
            "affordable": affordable(estimate.amount, balance),
            "balance": balance_json(balance),
        }

    async def get(self, key: ApiKey, task_id: str) -> TaskRecord:
        require_tenant(key)
        task = await self.queue.get(task_id, key.id)
        if task is None:
            raise _not_found(task_id)
        return task

    async def status(self, key: ApiKey, task_id: str, base_url: str) -> dict[str, Any]:
        """`GET /v1/tasks/{id}`: the view of one of the caller's tasks, in one query; a finished
        task's is kept for a while, never past its files' expiry (after which the sweeper marks
        the result expired)."""
        require_tenant(key)
        cache_key = (key.id, task_id, base_url)
        now = time.monotonic()
        cached = self._finished.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        task = await self.queue.view(task_id, key.id)  # with its queue position
        if task is None:
            raise _not_found(task_id)
        view = await self.render(task, base_url)
        ttl = FINISHED_VIEW_CACHE_SECONDS
        if task.result is not None and task.files_expired_at is None:
            ttl = min(ttl, task.result.expires_at - time.time())
        if task.status.finished and ttl > 0:
            self._finished[cache_key] = (now + ttl, view)
            if len(self._finished) > FINISHED_VIEW_CACHE_SIZE:
                self._finished.popitem(last=False)
        return view

    async def render(self, task: TaskRecord | TaskView, base_url: str) -> dict[str, Any]:
        """The contract's JSON for one task, its file links under `base_url` (or `public_url`);
        a pending task's queue position is counted unless the read that found it did."""
        view = task.view() if isinstance(task, TaskRecord) else task
        if view.status is TaskStatus.PENDING and view.queue_position is None:
            position = await self.queue.queue_position(view)
            view = dataclasses.replace(view, queue_position=position)
        return task_json(view, self.files.links(base_url))

    async def page(
        self,
        key: ApiKey,
        *,
        status: TaskStatus | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[TaskRecord], bool]:
        """The caller's tasks, newest first: at most `limit` after the task `after`, and
        whether more follow."""
        require_tenant(key)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(
                f"limit must be between 1 and {MAX_LIST_LIMIT} (got {limit})", param="limit"
            )
        rows = await self.queue.list_tasks(
            key.id, status=status, model=model, limit=limit + 1, after=after
        )
        return rows[:limit], len(rows) > limit

    async def cancel(self, key: ApiKey, task_id: str) -> TaskRecord:
        require_tenant(key)
        outcome, task = await self.queue.cancel(task_id, key.id)
        if outcome is CancelOutcome.NOT_FOUND or task is None:
            raise _not_found(task_id)
        if outcome is CancelOutcome.FINISHED:
            raise Conflict(
                f"task {task.id} is already {task.status.value} and cannot be cancelled",
                param="task_id",
            )
        return task

    async def delete(self, key: ApiKey, task_id: str) -> TaskRecord:
        """Delete one of the caller's tasks with its files: a pending task is cancelled first;
        a processing one is asked to stop and answers 409 until it has."""
        task = await self.get(key, task_id)
        if not task.status.finished:
            outcome, current = await self.queue.cancel(task.id, key.id)
            if current is None:
                raise _not_found(task_id)
            if outcome is CancelOutcome.REQUESTED:
                raise Conflict(
                    f"task {task.id} is still being generated: its cancellation was requested; "
                    "delete it again once it has stopped",
                    param="task_id",
                )
            task = current
        await asyncio.to_thread(self.storage.delete_prefix, task.id)
        await self.webhooks.delete_for_task(task.id)
        await self.queue.delete_finished(task.id, key.id)
        for cache_key in [k for k in self._finished if k[1] == task.id]:
            self._finished.pop(cache_key, None)
        return task

    async def deliveries(self, key: ApiKey, task_id: str) -> list[dict[str, Any]]:
        """`GET /v1/tasks/{id}/webhooks`: the task's deliveries and every attempt made."""
        task = await self.get(key, task_id)
        return [delivery_json(x, attempts) for x, attempts in await self.webhooks.for_task(task.id)]


def _not_found(task_id: str) -> NotFound:
    shown = task_id if len(task_id) <= 64 else task_id[:61] + "..."
    return NotFound(f'no task "{shown}" found', param="task_id")
