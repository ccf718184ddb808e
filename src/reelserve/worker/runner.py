"""The worker loop.

A worker claims a task with a lease, runs it on its provider with bounded concurrency, keeps the
lease alive while it runs (flushing progress at the same time), and records the outcome with an
update fenced by the lease token. If the worker dies, the lease expires and another worker's claim
resumes the task from its checkpoint; if it shuts down gracefully, it gives its leases back at
once. Blocking work (rendering, encoding, probing) always runs in threads.

A watchdog bounds what a provider that ignores a stop can cost. A thread cannot be killed, so a
provider stops only where it checks `ctx.check_cancelled()`; one that does not check (a bug, or
input that makes one step take hours) is abandoned instead: `stop_timeout` seconds after a
cancellation its task fails with a `timeout` error, and `shutdown_grace` seconds after a
shutdown its task is handed back and, with `exit_when_stuck` (the CLI's workers), the process
exits without waiting for the thread, which would otherwise keep it alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reelserve.domain.result import StoredVideo, TaskResult
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.video import probe_video, write_thumbnail
from reelserve.providers.base import (
    Clip,
    InputImages,
    ProviderError,
    TaskCancelled,
    Usage,
    Withheld,
)
from reelserve.store.queue import TaskQueue, TaskRecord
from reelserve.store.usage import UsageRecord
from reelserve.worker.parts import WorkerParts
from reelserve.worker.webhooks import WebhookDeliverer

log = logging.getLogger("reelserve.worker")

COMPUTE = "compute"
REMOTE = "remote"
PROVIDER_SHARE = 95  # progress percent reached when the provider is done; the rest is storing


class WorkerShutdown(Exception):
    """Raised inside a provider when this worker is stopping: the task is handed back."""


class LeaseLost(Exception):
    """This worker no longer owns the task (its lease expired and another worker took it)."""


@dataclass
class TaskContext:
    """The `RunContext` a provider sees, for one attempt at one task."""

    task_id: str
    workdir: Path
    resume_state: dict[str, Any] | None
    images: InputImages
    _queue: TaskQueue
    _token: str
    _checkpoint: dict[str, Any]
    _fraction: float = 0.0
    _stop: str | None = None  # "cancel" | "shutdown" | "lost"
    token: str = ""  # this attempt's lease token
    sent_progress: int = -1  # the progress last written to the store
    _stopped_at: float | None = None  # time.monotonic() of the stop request
    withheld: list[Withheld] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report_progress(self, fraction: float) -> None:
        with self._lock:
            if fraction > self._fraction:
                self._fraction = min(1.0, fraction)

    @property
    def fraction(self) -> float:
        with self._lock:
            return self._fraction

    def stop(self, reason: str) -> None:
        with self._lock:
            if self._stop is None:
                self._stop = reason
                self._stopped_at = time.monotonic()

    @property
    def stopped_at(self) -> float | None:
        with self._lock:
            return self._stopped_at

    @property
    def stop_reason(self) -> str | None:
        with self._lock:
            return self._stop

    @property
    def cancel_requested(self) -> bool:
        return self.stop_reason == "cancel"

    def report_withheld(self, withheld: list[Withheld]) -> None:
        self.withheld = list(withheld)

    def check_cancelled(self) -> None:
        reason = self.stop_reason
        if reason == "cancel":
            raise TaskCancelled("cancelled by the client")
        if reason == "shutdown":
            raise WorkerShutdown("worker is shutting down")
        if reason == "lost":
            raise LeaseLost(self.task_id)

    async def checkpoint(self, state: dict[str, Any]) -> None:
        self.resume_state = state
        await self._save("provider", state)

    @property
    def inputs_state(self) -> dict[str, Any]:
        """Where this task's fetched input images are kept (see worker.inputs)."""
        return dict(self._checkpoint.get("inputs") or {})

    async def save_inputs(self, state: dict[str, Any]) -> None:
        await self._save("inputs", state)

    async def _save(self, part: str, state: dict[str, Any]) -> None:
        """The task's checkpoint holds the worker's part ("inputs") and the provider's."""
        self._checkpoint[part] = state
        if not await self._queue.checkpoint(self.task_id, self._token, self._checkpoint):
            self.stop("lost")
            raise LeaseLost(self.task_id)


class Worker:
    def __init__(
        self,
        parts: WorkerParts,
        *,
        concurrency: int | None = None,
        remote_concurrency: int | None = None,
        providers: set[str] | None = None,
        models: set[str] | None = None,
        name: str | None = None,
        shutdown_grace: float | None = None,
        exit_when_stuck: bool = False,
    ) -> None:
        self.parts = parts
        self.settings = parts.settings
        # Two bounds: tasks that compute here (CPU/GPU) and tasks that wait on a remote service
        # (each costs a poll now and then), so that neither kind waits behind the other.
        self.concurrency = concurrency or self.settings.worker_concurrency
        self.remote_concurrency = remote_concurrency or self.settings.worker_remote_concurrency
        self.providers = providers if providers is not None else set(parts.providers)
        self.remote_providers = {
            name for name in self.providers if _kind(parts.providers.get(name)) == REMOTE
        }
        self.compute_providers = self.providers - self.remote_providers
        self.models = models
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.shutdown_grace = (
            shutdown_grace if shutdown_grace is not None else self.settings.shutdown_grace
        )
        # Exit the process (os._exit) after a shutdown that left a provider running: its
        # thread would hold the process forever (asyncio.run and interpreter exit join it).
        self.exit_when_stuck = exit_when_stuck
        self.stuck = 0  # tasks whose provider did not stop within the grace period
        self._wake = asyncio.Event()
        # Keyed by lease token (one per attempt): a task lost and re-claimed by this very worker
        # has two entries, and the old attempt's end never touches the new one's.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._remote_running: set[str] = set()
        self._contexts: dict[str, TaskContext] = {}
        self.completed = 0
        self.webhooks = WebhookDeliverer(parts, name=self.name)

    def wake(self) -> None:
        """Claim now instead of after the poll interval (thread-safe within the loop's thread)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "worker %s started (concurrency %d compute, %d remote)",
            self.name,
            self.concurrency,
            self.remote_concurrency,
        )
        last_reap = 0.0
        stop_wait = asyncio.create_task(stop.wait())
        # Every worker also delivers due webhooks, of any task (store/webhooks.py).
        delivering = asyncio.create_task(self.webhooks.run(stop))
        beating = asyncio.create_task(self._heartbeats())
        try:
            async with self.parts.queue.subscribe(self._notified):
                await self._loop(stop, stop_wait, last_reap)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            if not stop.is_set():
                delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
        log.info("worker %s stopped", self.name)
        if self.stuck and self.exit_when_stuck:
            _exit_now(self.name, self.stuck)

    def _notified(self, provider: str) -> None:
        if provider in self.providers:
            self._wake.set()

    async def _loop(
        self, stop: asyncio.Event, stop_wait: asyncio.Task[Any], last_reap: float
    ) -> None:
        last_sweep = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - last_sweep > self.settings.sweep_interval:
                    last_sweep = time.monotonic()
                    try:
                        await self.sweep()
                    except Exception:
                        log.exception("retention sweep failed; will retry")
                if time.monotonic() - last_reap > self.settings.lease_seconds / 2:
                    last_reap = time.monotonic()
                    with contextlib.suppress(Exception):
                        failed = await self.parts.queue.fail_exhausted(self.settings.max_attempts)
                        for task_id in failed:
                            log.warning("task %s failed: attempts exhausted", task_id)
                claimed = False
                # Cleared before claiming, so a submit, NOTIFY or finished task that comes
                # while this claim runs still wakes the wait below at once.
                self._wake.clear()
                try:
                    compute = len(self._running) - len(self._remote_running)
                    if self.compute_providers and compute < self.concurrency:
                        claimed = await self._claim_one(self.compute_providers, remote=False)
                    if self.remote_providers and (
                        len(self._remote_running) < self.remote_concurrency
                    ):
                        claimed = await self._claim_one(self.remote_providers, remote=True) or (
                            claimed
                        )
                except Exception:
                    log.exception("claim failed; retrying")
                if claimed:
                    continue
                # Woken by a submit in this process, a NOTIFY, a finished task (a free slot) or
                # the poll interval: never by waiting on thousands of running tasks.
                waiters: set[asyncio.Future[Any]] = {
                    stop_wait,
                    asyncio.ensure_future(self._wake.wait()),
                }
                _, pending = await asyncio.wait(
                    waiters,
                    timeout=self.settings.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for fut in pending:
                    if fut is not stop_wait:
                        fut.cancel()
        finally:
            stop_wait.cancel()
            await self._shutdown()

    async def sweep(self) -> int:
        """Delete the files of tasks finished more than `result_ttl` ago and mark them expired."""
        before = time.time() - self.settings.result_ttl
        swept = 0
        while ids := await self.parts.queue.expired_files(before):
            for task_id in ids:
                await asyncio.to_thread(self.parts.storage.delete_prefix, task_id)
                await self.parts.queue.mark_files_expired(task_id)
                swept += 1
        if swept:
            log.info("retention: deleted the files of %d tasks", swept)
        return swept

    async def _claim_one(self, providers: set[str], *, remote: bool) -> bool:
        token = f"{self.name}:{secrets.token_hex(6)}"
        task = await self.parts.queue.claim(
            token,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
            providers=providers,
            models=self.models,
        )
        if task is None:
            return False
        job = asyncio.create_task(self._execute(task, token))
        self._running[token] = job
        if remote:
            self._remote_running.add(token)

        def _done(_: asyncio.Task[None]) -> None:
            self._running.pop(token, None)
            self._remote_running.discard(token)
            self._wake.set()  # a slot is free: claim again

        job.add_done_callback(_done)
        return True

    async def _shutdown(self) -> None:
        if not self._running:
            return
        for ctx in list(self._contexts.values()):
            ctx.stop("shutdown")
        _, pending = await asyncio.wait(list(self._running.values()), timeout=self.shutdown_grace)
        for job in pending:
            job.cancel()  # `_execute` hands the task back (release) on its way out
        if pending:
            self.stuck += len(pending)
            log.error(
                "worker %s: %d task(s) did not stop within the %g s grace period; their "
                "leases are handed back and their provider threads abandoned",
                self.name,
                len(pending),
                self.shutdown_grace,
            )
            await asyncio.wait(pending, timeout=2)

    async def _execute(self, task: TaskRecord, token: str) -> None:
        queue = self.parts.queue
        workdir = await asyncio.to_thread(self._fresh_workdir, task.id)
        checkpoint = dict(task.checkpoint or {})
        ctx = TaskContext(
            task_id=task.id,
            workdir=workdir,
            resume_state=checkpoint.get("provider"),
            images=InputImages(),
            _queue=self.parts.queue,
            _token=token,
            _checkpoint=checkpoint,
            token=token,
            sent_progress=task.progress,
        )
        self._contexts[token] = ctx
        if task.cancel_requested:
            ctx.stop("cancel")
        outcome = "?"
        claimed_at = time.monotonic()
        if task.attempts == 1 and task.started_at is not None:
            self.parts.metrics.task_claimed(task.model, task.started_at - task.created_at)
        try:
            provider = self.parts.providers.get(task.provider)
            if provider is None:
                raise ProviderError(
                    ErrorCode.PROVIDER_NOT_CONFIGURED,
                    f'provider "{task.provider}" is not available on this worker',
                )
            spec = GenerationSpec.model_validate(task.spec)
            ctx.check_cancelled()
            ctx.images = await self._inputs(task, spec, ctx)
            clips = await self._watched(provider.run(spec, ctx), ctx)
            ctx.check_cancelled()
            result = await self._store_results(task, spec, clips, ctx.withheld)
            ctx.check_cancelled()
            await self._record_usage(task, spec, provider, ctx, result)
            if await queue.complete(task.id, token, result):
                outcome = "completed"
                self.completed += 1
            else:
                outcome = "lost"
        except TaskCancelled:
            await queue.mark_cancelled(task.id, token)
            outcome = "cancelled"
        except WorkerShutdown:
            await queue.release(task.id, token)
            outcome = "released"
        except LeaseLost:
            outcome = "lost"
        except ProviderError as exc:
            outcome = "failed"
            await queue.fail(task.id, token, exc.code, exc.message)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(queue.release(task.id, token))
            outcome = "released"
            raise
        except Exception:
            log.exception("task %s failed with an internal error", task.id)
            outcome = "failed"
            await queue.fail(
                task.id,
                token,
                ErrorCode.INTERNAL_ERROR.value,
                "an internal error stopped this task; the server log has the details",
            )
        finally:
            self._contexts.pop(token, None)
            self.parts.metrics.task_attempt_finished(
                task.model, outcome, time.monotonic() - claimed_at
            )
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            log.info("task %s %s (attempt %d)", task.id, outcome, task.attempts)
            self.webhooks.wake()  # a finished task's webhook is due now

    async def _watched(self, run: Coroutine[Any, Any, list[Clip]], ctx: TaskContext) -> list[Clip]:
        """`run` (a provider's), abandoned `stop_timeout` seconds after a cancellation or a lost
        lease that it ignores. Shutdown is bounded by `_shutdown`'s grace period instead (the
        job is cancelled, and the task handed back)."""
        job = asyncio.ensure_future(run)
        timeout = self.settings.stop_timeout
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=min(1.0, timeout / 4))
                if done:
                    return job.result()
                since = ctx.stopped_at or math.inf
                if ctx.stop_reason in ("cancel", "lost") and time.monotonic() - since >= timeout:
                    break
        except asyncio.CancelledError:
            job.cancel()
            raise
        job.cancel()  # ends the provider's awaits; a thread it waits on runs on, abandoned
        await asyncio.wait({job}, timeout=1)
        if ctx.stop_reason == "lost":
            raise LeaseLost(ctx.task_id)
        log.error("task %s: the provider ignored the cancellation for %g s", ctx.task_id, timeout)
        raise ProviderError(
            ErrorCode.TIMEOUT,
            f"the task was cancelled, but its provider did not stop within {timeout:g} s; "
            "the task was failed and the provider's work abandoned",
        )

    def _fresh_workdir(self, task_id: str) -> Path:
        """A scratch directory for this attempt, after removing any left by an earlier,
        interrupted attempt (this worker holds the task's lease now)."""
        scratch = self.settings.data_dir / "work"
        for stale in scratch.glob(f"{task_id}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        workdir = scratch / f"{task_id}.{secrets.token_hex(3)}"
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    async def _inputs(
        self, task: TaskRecord, spec: GenerationSpec, ctx: TaskContext
    ) -> InputImages:
        """Fetched, fitted input images (image-to-video); none for text-to-video."""
        if spec.first_frame_image is None:
            return InputImages()
        from reelserve.worker.inputs import load_inputs

        return await load_inputs(self.parts, task, spec, ctx)

    async def _store_results(
        self,
        task: TaskRecord,
        spec: GenerationSpec,
        clips: list[Clip],
        withheld: list[Withheld],
    ) -> TaskResult:
        storage = self.parts.storage

        def _finish(index: int, clip: Clip) -> StoredVideo:
            info = probe_video(clip.path)
            thumb = clip.path.with_suffix(".jpg")
            write_thumbnail(clip.path, thumb)
            video_key = f"{task.id}/{index}.mp4"
            thumb_key = f"{task.id}/{index}.jpg"
            size = storage.put_file(video_key, clip.path)
            storage.put_file(thumb_key, thumb)
            return StoredVideo(
                video_key=video_key,
                thumbnail_key=thumb_key,
                duration=round(info.duration, 3),
                width=info.width,
                height=info.height,
                fps=round(info.fps, 3),
                has_audio=info.has_audio,
                seed=clip.seed,
                person_generation=clip.person_generation,
                size_bytes=size,
            )

        videos = []
        for index, clip in enumerate(clips):
            videos.append(await asyncio.to_thread(_finish, index, clip))
        return TaskResult(
            videos=tuple(videos),
            expires_at=int(time.time()) + self.settings.result_ttl,
            withheld=tuple(withheld),
        )

    async def _record_usage(
        self,
        task: TaskRecord,
        spec: GenerationSpec,
        provider: Any,
        ctx: TaskContext,
        result: TaskResult,
    ) -> None:
        """The task's usage row, written just before it is marked completed (store/usage.py
        counts completed tasks only). A failed write is logged, never fails a finished video."""
        videos = result.videos
        cost_of = getattr(provider, "usage", None)
        usage = cost_of(spec, ctx.resume_state, len(videos)) if cost_of else Usage()
        row = UsageRecord(
            task_id=task.id,
            api_key_id=task.api_key_id,
            model=task.model,
            provider=task.provider,
            videos=len(videos),
            video_seconds=result.video_seconds,
            has_audio=result.has_audio,
            cost=usage.cost,
            currency=usage.currency,
            credential=usage.credential,
        )
        try:
            await self.parts.usage.record(row)
        except Exception:
            log.exception("task %s: recording its usage failed", task.id)

    async def _heartbeats(self) -> None:
        """Every interval, one renewal of every lease this worker holds (a statement per
        chunk, `TaskQueue.heartbeat_many`), with the progress of the tasks whose progress
        changed; then the tasks found lost or cancelled are told so."""
        interval = min(self.settings.lease_seconds / 3, self.settings.progress_flush_interval)
        while True:
            await asyncio.sleep(interval)
            contexts = list(self._contexts.values())
            if not contexts:
                continue
            leases = [(ctx.task_id, ctx.token) for ctx in contexts]
            progress = {}
            for ctx in contexts:
                pct = int(ctx.fraction * PROVIDER_SHARE)
                if pct > ctx.sent_progress:
                    progress[ctx.token] = pct
            try:
                owned = await self.parts.queue.heartbeat_many(
                    leases, lease_seconds=self.settings.lease_seconds, progress=progress
                )
            except Exception:
                log.exception("renewing %d leases failed; will retry", len(leases))
                continue
            for ctx in contexts:
                if ctx.token not in owned:
                    ctx.stop("lost")
                    continue
                if ctx.token in progress:
                    ctx.sent_progress = progress[ctx.token]
                if owned[ctx.token]:
                    ctx.stop("cancel")


def _kind(provider: object) -> str:
    """A provider's kind of work: "remote" (it waits on another service: Veo, relays) or
    "compute" (it works here, on the CPU or GPU), as the provider declares it."""
    return REMOTE if getattr(provider, "kind", COMPUTE) == REMOTE else COMPUTE


def _exit_now(name: str, stuck: int) -> None:
    """End the process at once, leases already handed back: a provider thread that ignored the
    stop would otherwise keep it alive (threads cannot be killed; asyncio.run and interpreter
    exit wait for them). Exit status 1 tells a supervisor that work was abandoned."""
    log.error(
        "worker %s exits without waiting for %d provider thread(s) that ignored the stop",
        name,
        stuck,
    )
    logging.shutdown()  # flush every handler: os._exit skips that
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
