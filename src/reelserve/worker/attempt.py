"""One attempt at one task: from the claim to the outcome.

The attempt builds the task's context, fetches its input images, runs its provider, stores the
clips and records the outcome, every write fenced by the attempt's lease token: completed,
failed (with the provider's error code, or `internal_error`), cancelled, handed back (the worker
is stopping) or nothing at all (the lease was lost: another worker owns the task now).

A watchdog bounds what a provider that ignores a stop can cost. A thread cannot be killed, so a
provider stops only where it checks `ctx.check_cancelled()`; one that does not check (a bug, or
input that makes one step take hours) is abandoned instead: `stop_timeout` seconds after a
cancellation or a lost lease its task fails with a `timeout` error (or is left to its new
owner). A shutdown is bounded by the claim loop's grace period instead (`worker/loop.py`): the
attempt is cancelled, and hands the task back on its way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import Clip, InputImages, ProviderError, TaskCancelled
from reelserve.store.queue import TaskRecord
from reelserve.worker.context import LeaseLost, TaskContext, WorkerShutdown
from reelserve.worker.parts import WorkerParts
from reelserve.worker.results import store_results, usage_row
from reelserve.worker.timers import Timers

log = logging.getLogger("reelserve.worker")


class Attempts:
    """Runs attempts, and keeps the context of each one in flight by lease token (a task lost
    and claimed again by this very worker has two, and the old one's end never touches the
    new one's)."""

    def __init__(
        self,
        parts: WorkerParts,
        *,
        on_finished: Callable[[], None],
        on_rerouted: Callable[[str], None] = lambda route: None,
    ) -> None:
        self.parts = parts
        self._on_rerouted = on_rerouted  # a task was queued on this route: claim it now
        self.settings = parts.settings
        self.contexts: dict[str, TaskContext] = {}
        self._by_task: dict[str, dict[str, TaskContext]] = {}  # task id -> its attempts here
        self.timers = Timers()  # every attempt's waits (`TaskContext.sleep`), by due time
        self.completed = 0
        self._on_finished = on_finished  # a finished task's webhook is due now

    def stop(self, tokens: Collection[str], reason: str) -> None:
        """Ask the attempts of these lease tokens to stop (`TaskContext.stop`)."""
        for token in tokens:
            if (ctx := self.contexts.get(token)) is not None:
                ctx.stop(reason)

    async def run(self, task: TaskRecord, token: str) -> None:
        queue = self.parts.queue
        checkpoint = dict(task.checkpoint or {})
        ctx = TaskContext(
            task_id=task.id,
            workdir=Path(),  # set below, once the attempt's lease is renewed with the others
            resume_state=checkpoint.get("provider"),
            images=InputImages(),
            token=token,
            _queue=queue,
            _checkpoint=checkpoint,
            sent_progress=task.progress,
            _timers=self.timers,
        )
        # Tracked before anything is awaited, so that the next renewal keeps its lease even
        # when a burst of claims waits for threads (thousands claimed at once).
        self.contexts[token] = ctx
        # An older attempt of this task in this worker lost its lease (this claim could only
        # take the task once it had expired): it stops now, not at the next renewal, and its
        # scratch directory is left to it until it ends (`_fresh_workdir`).
        older = self._by_task.setdefault(task.id, {})
        for other in older.values():
            other.stop("lost")
        older[token] = ctx
        ctx.can_fail_over = self.parts.routes.has_next(task.model, task.provider)
        if task.cancel_requested:
            ctx.stop("cancel")
        outcome = "?"
        code: str | None = None  # the error code of a failed attempt
        claimed_at = time.monotonic()
        if task.attempts == 1 and task.started_at is not None:
            self.parts.metrics.task_claimed(task.model, task.started_at - task.created_at)
        try:
            outcome = await self._run(task, ctx)
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
            if exc.failover and ctx.can_fail_over and await self._fail_over(task, token, exc):
                outcome = "failed_over"
            else:
                code = exc.code
                await queue.fail(task.id, token, exc.code, exc.message)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(queue.release(task.id, token))
            outcome = "released"
            raise
        except Exception:
            log.exception("task %s failed with an internal error", task.id)
            outcome = "failed"
            code = ErrorCode.INTERNAL_ERROR.value
            await queue.fail(
                task.id,
                token,
                ErrorCode.INTERNAL_ERROR.value,
                "an internal error stopped this task; the server log has the details",
            )
        finally:
            self.contexts.pop(token, None)
            same = self._by_task.get(task.id, {})
            same.pop(token, None)
            if not same:
                self._by_task.pop(task.id, None)
            self.parts.metrics.task_attempt_finished(
                task.model, outcome, time.monotonic() - claimed_at
            )
            self.parts.metrics.route_attempt(task.model, task.provider, outcome, code)
            if ctx.workdir.parts:  # made (the first step of `_run`)
                await asyncio.to_thread(self._remove_workdir, ctx.workdir)
            log.info("task %s %s (attempt %d)", task.id, outcome, task.attempts)
            self._on_finished()

    async def _run(self, task: TaskRecord, ctx: TaskContext) -> str:
        """The attempt's work, up to `complete`: "completed", or "lost" where the lease was
        lost meanwhile; a stop or a failure is raised."""
        others = {o.workdir.name for o in self._by_task.get(task.id, {}).values() if o is not ctx}
        ctx.workdir = await asyncio.to_thread(self._fresh_workdir, task.id, others)
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
        result = await store_results(self.parts, task, clips, ctx.withheld)
        ctx.check_cancelled()
        usage = provider.usage(spec, ctx.resume_state, len(clips))
        row = self.parts.usage.insert(usage_row(task, usage, result))
        if not await self.parts.queue.complete(task.id, ctx.token, result, also=[row]):
            return "lost"
        self.completed += 1
        return "completed"

    async def _fail_over(self, task: TaskRecord, token: str, exc: ProviderError) -> bool:
        """Move the task to its model's next route that serves it, after a failure before
        anything was paid upstream (docs/routing.md); False where there is none (the task
        fails with `exc`) or the lease was lost."""
        spec = GenerationSpec.model_validate(task.spec)
        target = self.parts.routes.next_after(task.model, task.provider, spec)
        if target is None:
            return False
        log.warning(
            "task %s: route %s failed before anything was paid (%s); failing over to %s",
            task.id,
            task.provider,
            exc.message,
            target.name,
        )
        if not await self.parts.queue.reroute(task.id, token, target.name):
            return True  # the lease was lost: the task is another attempt's now
        self.parts.metrics.route_failover(task.model, task.provider, target.name)
        self._on_rerouted(target.name)
        return True

    async def _watched(self, run: Coroutine[Any, Any, list[Clip]], ctx: TaskContext) -> list[Clip]:
        """`run` (a provider's), abandoned `stop_timeout` seconds after a cancellation or a lost
        lease that it ignores. Nothing wakes before a stop: the watch waits on the provider and
        on the attempt's stop event together."""
        job = asyncio.ensure_future(run)
        stopped = asyncio.ensure_future(ctx.wait_stopped())
        timeout = self.settings.stop_timeout
        try:
            done, _ = await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if job not in done and ctx.stop_reason not in ("cancel", "lost"):
                return await job  # a shutdown: the claim loop's grace period bounds it
            if job not in done:
                since = ctx.stopped_at or time.monotonic()
                left = max(0.0, timeout - (time.monotonic() - since))
                done, _ = await asyncio.wait({job}, timeout=left)
            if job in done:
                return job.result()
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            stopped.cancel()
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

    def _fresh_workdir(self, task_id: str, keep: Collection[str] = ()) -> Path:
        """A scratch directory for this attempt, `work/<task id>/<random>`, after removing any
        left by an earlier, interrupted attempt (this worker holds the task's lease now), but
        those named in `keep`: an older attempt of this worker that lost the lease and is still
        winding down removes its own when it ends. One directory per task: finding the
        leftovers never lists the other tasks' (ten thousand in flight made that a scan per
        claim)."""
        task_dir = self.settings.data_dir / "work" / task_id
        if task_dir.exists():
            for left in task_dir.iterdir():
                if left.name in keep:
                    continue
                if left.is_dir() and not left.is_symlink():
                    shutil.rmtree(left, ignore_errors=True)
                else:
                    left.unlink(missing_ok=True)
        workdir = task_dir / secrets.token_hex(3)
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    @staticmethod
    def _remove_workdir(workdir: Path) -> None:
        """This attempt's scratch directory, and its task's when no other attempt uses it."""
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            workdir.parent.rmdir()

    async def _inputs(
        self, task: TaskRecord, spec: GenerationSpec, ctx: TaskContext
    ) -> InputImages:
        """Fetched, fitted input images (image-to-video); none for text-to-video."""
        if spec.first_frame_image is None:
            return InputImages()
        from reelserve.worker.inputs import load_inputs

        return await load_inputs(self.parts, task, spec, ctx)
