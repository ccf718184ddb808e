"""The application service: what the API does, minus HTTP.

`Reelserve` holds the parts of one running server (settings, database, queue, keys, storage,
providers) and implements the operations the routes call: submit, get, list, cancel, open a file.
It turns task rows into the contract's JSON views, signing file URLs as it goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reelserve.domain.errors import Conflict, Gone, InvalidRequest, NotFound, PermissionDenied
from reelserve.domain.ids import task_id as new_task_id
from reelserve.domain.models import ModelEntry
from reelserve.domain.result import TaskResult
from reelserve.domain.spec import GenerationSpec, parse_generation_request
from reelserve.domain.task import TaskStatus
from reelserve.media.images import FetchPolicy, ImageInputError, check_image_source
from reelserve.metrics import Metrics
from reelserve.net.guard import OutboundError, check_destination
from reelserve.providers.base import Capabilities, Provider
from reelserve.providers.registry import (
    SANDBOX,
    build_capabilities,
    build_providers,
    fit_models,
    not_configured_message,
)
from reelserve.settings import Settings
from reelserve.storage.base import Storage
from reelserve.storage.factory import open_storage
from reelserve.storage.signing import FileGrant, Signer, TokenError
from reelserve.store.db import create_engine, upgrade
from reelserve.store.keys import ApiKey, KeyMode, KeyStore
from reelserve.store.observe import task_stats
from reelserve.store.queue import CancelOutcome, IdempotencyConflict, TaskQueue, TaskRecord
from reelserve.store.usage import UsageStore
from reelserve.store.webhooks import Attempt, Delivery, WebhookStore, new_webhook_secret
from reelserve.worker.parts import WorkerParts

MAX_LIST_LIMIT = 100
LANGUAGES = ("en", "zh", "ko", "ja")
AUTH_CACHE_SECONDS = 5.0
FINISHED_VIEW_CACHE_SECONDS = 30.0
FINISHED_VIEW_CACHE_SIZE = 10_000


@dataclass
class OpenedFile:
    key: str
    content_type: str
    expires_at: int


@dataclass
class Reelserve:
    settings: Settings
    queue: TaskQueue
    keys: KeyStore
    webhooks: WebhookStore
    storage: Storage
    signer: Signer
    providers: dict[str, Provider]
    models: dict[str, ModelEntry]
    usage: UsageStore
    capabilities: dict[str, Capabilities] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    _auth_cache: dict[str, tuple[float, ApiKey]] = field(default_factory=dict)
    _submit_listeners: list[Callable[[], None]] = field(default_factory=list)
    _finished_views: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any]]] = field(
        default_factory=OrderedDict
    )

    @classmethod
    async def open(
        cls, settings: Settings, *, migrate: bool = True, metrics: Metrics | None = None
    ) -> Reelserve:
        settings.ensure_dirs()
        engine = create_engine(settings.resolved_database_url)
        if migrate:
            await upgrade(engine)
        providers = build_providers(settings)
        capabilities = build_capabilities(settings, providers)
        return cls(
            settings=settings,
            queue=TaskQueue(engine),
            keys=KeyStore(engine),
            webhooks=WebhookStore(engine, settings.signing_key()),
            storage=open_storage(settings),
            signer=Signer(settings.signing_key()),
            providers=providers,
            models=fit_models(settings.model_map(), capabilities),
            usage=UsageStore(engine),
            capabilities=capabilities,
            metrics=metrics or Metrics(),
        )

    async def close(self) -> None:
        self.queue.close()
        await self.queue.engine.dispose()

    def worker_parts(self) -> WorkerParts:
        """What a worker of this process is given (it never sees this object)."""
        return WorkerParts(
            settings=self.settings,
            queue=self.queue,
            storage=self.storage,
            providers=self.providers,
            usage=self.usage,
            webhooks=self.webhooks,
            metrics=self.metrics,
            image_policy=self.image_policy(),
            webhook_policy=self.webhook_policy(),
            render_task=self.task_view,
        )

    def on_submit(self, listener: Callable[[], None]) -> None:
        """Called after each submit in this process (the in-process worker wakes at once)."""
        self._submit_listeners.append(listener)

    # -- auth ----------------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> ApiKey | None:
        """Look a key up, with a few seconds of in-process cache (revocation takes effect within
        AUTH_CACHE_SECONDS)."""
        now = time.monotonic()
        cached = self._auth_cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self.keys.authenticate(secret)
        if key is not None:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[secret] = (now + AUTH_CACHE_SECONDS, key)
        else:
            self._auth_cache.pop(secret, None)
        return key

    async def create_key(self, mode: KeyMode, name: str = "") -> tuple[ApiKey, str, str]:
        """Mint an API key with its webhook signing secret: (key, API key secret, webhook
        secret). Both secrets are shown once; the webhook secret is stored sealed."""
        webhook_secret = new_webhook_secret()
        key, secret = await self.keys.create(
            mode, name, webhook_secret=self.webhooks.box.seal(webhook_secret)
        )
        return key, secret, webhook_secret

    # -- tasks ---------------------------------------------------------------------------------

    def provider_for(self, key: ApiKey, entry: ModelEntry) -> str:
        """Test keys run every model on the sandbox; live keys run the model's own provider, if
        this process can run it or the operator said workers elsewhere do (`remote_providers`)."""
        if key.is_test:
            return SANDBOX
        runnable = entry.provider in self.providers
        if not runnable and entry.provider not in self.settings.remote_providers:
            raise InvalidRequest(
                f'model "{entry.id}" cannot run for this live key: '
                f"{not_configured_message(entry.provider)}; or use a test key to run it on "
                "the sandbox",
                param="model",
            )
        return entry.provider

    async def submit(
        self,
        key: ApiKey,
        body: object,
        *,
        idempotency_key: str | None = None,
        base_url: str = "",
    ) -> TaskRecord:
        """Queue a generation. `base_url` (the URL the request came to) is kept for the file
        links of the task's webhook when `public_url` is not set."""
        spec = parse_generation_request(
            body, self.models, allow_http_webhooks=self.settings.allow_http_webhooks
        )
        entry = self.models[spec.model]
        provider = self.provider_for(key, entry)
        if (capabilities := self.capabilities.get(provider)) is not None:
            # The upstream refuses some requests its model entry allows (Veo's backends).
            capabilities.admit(spec)
        await self.check_images(spec)
        task_id = new_task_id()
        also_insert = []
        if spec.webhook_url is not None:
            await self.check_webhook(key, spec.webhook_url)
            also_insert.append(
                self.webhooks.insert_delivery(
                    task_id=task_id, api_key_id=key.id, url=spec.webhook_url, base_url=base_url
                )
            )
        request_hash = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidRequest(
                    "Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key"
                )
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            request_hash = hashlib.sha256(canonical.encode()).hexdigest()
        try:
            task, created = await self.queue.submit(
                task_id=task_id,
                api_key_id=key.id,
                model=spec.model,
                provider=provider,
                spec=spec.model_dump(mode="json"),
                estimated_time=entry.estimated_time,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                also_insert=also_insert,
            )
        except IdempotencyConflict as exc:
            raise Conflict(
                f"Idempotency-Key was already used with a different request (task {exc.task.id})",
                param="Idempotency-Key",
            ) from None
        if created:
            for listener in self._submit_listeners:
                listener()
        return task

    def image_policy(self) -> FetchPolicy:
        s = self.settings
        return FetchPolicy(
            allow_hosts=tuple(s.image_allow_hosts),
            allow_networks=tuple(s.image_allow_networks),
            resolve_overrides=dict(s.image_resolve_overrides),
        )

    async def check_images(self, spec: GenerationSpec) -> None:
        """What can be known at submit (scheme, address, data URL contents) is a 400 now;
        the rest (the fetch itself) fails the task with `invalid_image` later."""
        policy = self.image_policy()
        for param, source in (
            ("first_frame_image", spec.first_frame_image),
            ("last_frame_image", spec.last_frame_image),
        ):
            if source is None:
                continue
            try:
                await check_image_source(source, param, policy)
            except ImageInputError as exc:
                raise InvalidRequest(exc.message, param=param) from None

    def webhook_policy(self) -> FetchPolicy:
        s = self.settings
        return FetchPolicy(
            allow_hosts=tuple(s.webhook_allow_hosts),
            allow_networks=tuple(s.webhook_allow_networks),
            total_timeout=s.webhook_timeout,
        )

    async def check_webhook(self, key: ApiKey, url: str) -> None:
        """What can be known at submit: the key can sign, and the target's address is public
        (or allowed). Delivery checks the address again, since DNS answers change."""
        if not await self.webhooks.has_secret(key.id):
            raise InvalidRequest(
                "this API key has no webhook signing secret (it was created before webhooks "
                "existed); the operator can give it one with `reelserve keys "
                "rotate-webhook-secret`",
                param="webhook_url",
            )
        try:
            await check_destination(url, "webhook_url", self.webhook_policy())
        except OutboundError as exc:
            raise InvalidRequest(exc.message, param="webhook_url") from None

    async def task_webhooks(self, key: ApiKey, task_id: str) -> list[dict[str, Any]]:
        """`GET /v1/tasks/{id}/webhooks`: the task's deliveries and every attempt made."""
        task = await self.get_task(key, task_id)
        deliveries = await self.webhooks.for_task(task.id)
        return [_delivery_view(x, attempts) for x, attempts in deliveries]

    async def delete_task(self, key: ApiKey, task_id: str) -> TaskRecord:
        """Delete one of the caller's tasks with its files: a pending task is cancelled first;
        a processing one is asked to stop and answers 409 until it has."""
        task = await self.get_task(key, task_id)
        if not task.status.finished:
            outcome, current = await self.queue.cancel(task.id, key.id)
            if current is None:
                raise NotFound(f'no task "{_clip(task_id)}" found', param="task_id")
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
        for cache_key in [k for k in self._finished_views if k[1] == task.id]:
            self._finished_views.pop(cache_key, None)
        return task

    def result_file_token(self, task: TaskRecord, variant: str, index: int = 0) -> str:
        """A signed file token for sample `index` of a completed task (`video` or `thumbnail`);
        `Gone` once the retention sweeper has deleted the files."""
        if task.status is not TaskStatus.COMPLETED or task.result is None:
            raise Conflict(
                f"task {task.id} is {task.status.value}; only a completed task has content",
                param="task_id",
            )
        if task.files_expired_at is not None:
            raise Gone(f"the files of task {task.id} have expired")
        video = task.result.videos[index]
        expires_at = task.result.expires_at
        if variant == "thumbnail":
            return self.signer.sign(FileGrant(video.thumbnail_key, "image/jpeg", expires_at))
        return self.signer.sign(FileGrant(video.video_key, "video/mp4", expires_at))

    async def get_task(self, key: ApiKey, task_id: str) -> TaskRecord:
        task = await self.queue.get(task_id, key.id)
        if task is None:
            raise NotFound(f'no task "{_clip(task_id)}" found', param="task_id")
        return task

    async def task_status(self, key: ApiKey, task_id: str, base_url: str) -> dict[str, Any]:
        """`GET /v1/tasks/{id}`: the view of one of the caller's tasks, in one query.

        A finished task never changes, so its view is kept for a short while and repeated polls
        of it cost no database read; never past its files' expiry, after which the sweeper marks
        the result expired."""
        cache_key = (key.id, task_id, base_url)
        now = time.monotonic()
        cached = self._finished_views.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        task, position = await self.queue.get_with_position(task_id, key.id)
        if task is None:
            raise NotFound(f'no task "{_clip(task_id)}" found', param="task_id")
        view = await self.task_view(task, base_url, queue_position=position)
        ttl = FINISHED_VIEW_CACHE_SECONDS
        if task.result is not None and task.files_expired_at is None:
            ttl = min(ttl, task.result.expires_at - time.time())
        if task.status.finished and ttl > 0:
            self._finished_views[cache_key] = (now + ttl, view)
            if len(self._finished_views) > FINISHED_VIEW_CACHE_SIZE:
                self._finished_views.popitem(last=False)
        return view

    async def list_tasks(
        self,
        key: ApiKey,
        *,
        status: str | None,
        model: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[TaskRecord], bool]:
        if status is not None and status not in {s.value for s in TaskStatus}:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise InvalidRequest(
                f'status must be one of {allowed} (got "{_clip(status)}")', param="status"
            )
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(
                f"limit must be between 1 and {MAX_LIST_LIMIT} (got {limit})", param="limit"
            )
        rows = await self.queue.list_tasks(
            key.id, status=status, model=model, limit=limit + 1, after=after
        )
        return rows[:limit], len(rows) > limit

    async def cancel(self, key: ApiKey, task_id: str) -> TaskRecord:
        outcome, task = await self.queue.cancel(task_id, key.id)
        if outcome is CancelOutcome.NOT_FOUND or task is None:
            raise NotFound(f'no task "{_clip(task_id)}" found', param="task_id")
        if outcome is CancelOutcome.FINISHED:
            raise Conflict(
                f"task {task.id} is already {task.status.value} and cannot be cancelled",
                param="task_id",
            )
        return task

    # -- views ---------------------------------------------------------------------------------

    async def task_view(
        self, task: TaskRecord, base_url: str, *, queue_position: int | None = None
    ) -> dict[str, Any]:
        """The contract's JSON for one task."""
        view: dict[str, Any] = {
            "id": task.id,
            "status": task.status.value,
            "progress": task.progress,
            "model": task.model,
            "created": int(task.created_at),
            "estimated_time": task.estimated_time,
        }
        if task.status is TaskStatus.PENDING:
            if queue_position is None:
                queue_position = await self.queue.queue_position(task)
            view["queue_position"] = queue_position
        if task.status.finished and task.finished_at is not None:
            view["completed"] = int(task.finished_at)
            view["actual_time"] = max(0, math.ceil(task.finished_at - task.created_at))
        if task.status is TaskStatus.COMPLETED and task.result is not None:
            view["result"] = self._result_view(task.result, base_url)
            if task.files_expired_at is not None:
                view["result"]["expired"] = True
        if task.status is TaskStatus.FAILED:
            view["error"] = {
                "code": task.error_code or "internal_error",
                "message": task.error_message or "",
            }
        return view

    def _result_view(self, result: TaskResult, base_url: str) -> dict[str, Any]:
        base = (self.settings.public_url or base_url).rstrip("/")
        expires_at = result.expires_at
        videos = []
        for video in result.videos:
            video_token = self.signer.sign(FileGrant(video.video_key, "video/mp4", expires_at))
            thumb_token = self.signer.sign(FileGrant(video.thumbnail_key, "image/jpeg", expires_at))
            videos.append(
                {
                    "url": [f"{base}/v1/files/{video_token}"],
                    "expires_at": expires_at,
                    "thumbnail_url": f"{base}/v1/files/{thumb_token}",
                    "duration": video.duration,
                    "width": video.width,
                    "height": video.height,
                    "fps": video.fps,
                    "has_audio": video.has_audio,
                    "seed": video.seed,
                    "person_generation": video.person_generation,
                    "size_bytes": video.size_bytes,
                    "content_type": "video/mp4",
                }
            )
        view: dict[str, Any] = {"videos": videos}
        if result.withheld:
            view["withheld"] = [w.to_json() for w in result.withheld]
        return view

    def open_file(self, token: str) -> OpenedFile:
        """Check a file link's signature and expiry; the route then streams the bytes."""
        try:
            grant = self.signer.verify(token)
        except TokenError as exc:
            if exc.expired:
                raise Gone(str(exc)) from None
            raise PermissionDenied("this file link is not valid") from None
        return OpenedFile(grant.key, grant.content_type, grant.expires_at)

    async def usage_report(
        self, key: ApiKey, *, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """`GET /v1/usage`: the caller's completed tasks, videos, seconds of video and cost per
        model (and currency), recorded in [since, until) (Unix seconds; both optional)."""
        start = _unix_time(since, "since")
        end = _unix_time(until, "until")
        if start is not None and end is not None and end <= start:
            raise InvalidRequest(
                f"until must be later than since (got since={since}, until={until})",
                param="until",
            )
        rows = await self.usage.totals(key.id, since=start, until=end)
        totals: dict[str, dict[str, Any]] = {}
        for row in rows:
            total = totals.setdefault(
                row.currency,
                {
                    "currency": row.currency,
                    "tasks": 0,
                    "videos": 0,
                    "video_seconds": 0.0,
                    "cost": 0.0,
                },
            )
            total["tasks"] += row.tasks
            total["videos"] += row.videos
            total["video_seconds"] = round(total["video_seconds"] + row.video_seconds, 3)
            total["cost"] = round(total["cost"] + row.cost, 6)
        return {
            "object": "usage",
            "since": start,
            "until": end,
            "models": [
                {
                    "model": row.model,
                    "tasks": row.tasks,
                    "videos": row.videos,
                    "video_seconds": row.video_seconds,
                    "cost": row.cost,
                    "currency": row.currency,
                }
                for row in rows
            ],
            "totals": list(totals.values()),
        }

    async def refresh_metrics(self) -> None:
        """The task gauges, read from the store (tasks run in every process)."""
        stats = await task_stats(self.queue.engine)
        self.metrics.set_task_stats(stats.counts, stats.oldest_pending, self.models)

    async def ready(self) -> None:
        await self.queue.ping()
        await asyncio.to_thread(self.storage.ping)


def _unix_time(value: str | None, name: str) -> float | None:
    """A query parameter holding Unix seconds (an integer or decimal number), or None."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise InvalidRequest(
            f"{name} must be a Unix time in seconds, such as 1763088289 (got {_clip(value)!r})",
            param=name,
        )
    return number


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _delivery_view(delivery: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "url": delivery.url,
        "event": delivery.event,
        "status": delivery.state.value,
        "created": int(delivery.created_at),
        "next_attempt_at": (
            round(delivery.next_attempt_at, 3) if delivery.next_attempt_at is not None else None
        ),
        "finished": round(delivery.finished_at, 3) if delivery.finished_at is not None else None,
        "attempts": [
            {
                "attempt": x.attempt,
                "at": round(x.started_at, 3),
                "duration_ms": round(x.duration * 1000),
                "status_code": x.status_code,
                "error": x.error,
                "outcome": x.outcome.value,
            }
            for x in attempts
        ],
    }


def load_spec(task: TaskRecord) -> GenerationSpec:
    return GenerationSpec.model_validate(task.spec)
