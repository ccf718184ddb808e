"""A worker: one claim loop (`worker/loop.py`) with three lanes and three periodic jobs.

Lanes, each with its own bound, so that no kind of work waits behind another:

* `compute`: tasks of providers that work here, on the CPU or GPU (sandbox, diffusers), at most
  `worker_concurrency` at once;
* `remote`: tasks of providers that wait on another service (Veo), at most
  `worker_remote_concurrency` (each costs a poll now and then, not a slot of this host);
* `webhooks`: deliveries of any task's webhook (`worker/webhooks.py`), at most
  `webhook_concurrency`.

Each task attempt (`worker/attempt.py`) is keyed by its lease token. Beside the loop: one lease
renewal of every attempt every `lease_seconds / 3` (`TaskQueue.heartbeat_many`), a flush every
`progress_flush_interval` of the progress that rose (one grouped statement) and of the cancel
requests (one read of a partial index), the reaper that fails tasks whose attempts are spent,
and the retention sweep. A graceful stop asks every provider to stop and hands the leases back; a
provider that ignores it is abandoned after `shutdown_grace` and, with `exit_when_stuck` (the
CLI's workers), the process exits without waiting for its thread, which would otherwise keep it
alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Collection

from reelserve.domain.spec import GenerationSpec
from reelserve.media.threads import set_media_niceness
from reelserve.store.db import background_writes
from reelserve.store.queue import TaskRecord
from reelserve.store.task_claims import SpillClaim
from reelserve.worker.attempt import Attempts
from reelserve.worker.loop import Claimed, ClaimLoop, Lane, Periodic
from reelserve.worker.parts import WorkerParts
from reelserve.worker.webhooks import WebhookDeliverer

log = logging.getLogger("reelserve.worker")

COMPUTE = "compute"
REMOTE = "remote"
CLAIM_BATCH = 50  # tasks one claim statement takes at most (a burst is claimed in few turns)
PROVIDER_SHARE = 95  # progress percent reached when the provider is done; the rest is storing


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
        self.settings = settings = parts.settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.remote_concurrency = remote_concurrency or settings.worker_remote_concurrency
        # Route names (task rows carry their route's); a filter may name provider types too.
        kinds = parts.routes.kinds
        self.providers = (
            {r for r in parts.providers if r in providers or kinds.get(r) in providers}
            if providers is not None
            else set(parts.providers)
        )
        self.remote_providers = {
            name
            for name in self.providers
            if name in parts.providers and parts.providers[name].kind == REMOTE
        }
        self.compute_providers = self.providers - self.remote_providers
        self.models = models
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.shutdown_grace = (
            shutdown_grace if shutdown_grace is not None else settings.shutdown_grace
        )
        # Exit the process (os._exit) after a shutdown that left a provider running: its
        # thread would hold the process forever (asyncio.run and interpreter exit join it).
        self.exit_when_stuck = exit_when_stuck
        self.stuck = 0  # tasks whose provider did not stop within the grace period
        self._renewed_at: float | None = None  # time.monotonic() of the last renewal's start
        self.attempts = Attempts(parts, on_finished=self._task_finished, on_rerouted=self._notified)
        self.webhooks = WebhookDeliverer(parts, name=self.name)
        lanes = [self.webhooks.lane()]
        if self.remote_providers:
            lanes.insert(0, self._task_lane(REMOTE, self.remote_providers, self.remote_concurrency))
        if self.compute_providers:
            lanes.insert(0, self._task_lane(COMPUTE, self.compute_providers, self.concurrency))
        self.loop = ClaimLoop(
            lanes,
            [
                Periodic(
                    "renewing the leases",
                    settings.lease_seconds / 3,
                    self.heartbeat,
                    at_start=False,
                    fixed_rate=True,
                ),
                Periodic(
                    "flushing progress and cancel requests",
                    settings.progress_flush_interval,
                    self.flush,
                    at_start=False,
                ),
                Periodic("failing exhausted tasks", settings.lease_seconds / 2, self.reap),
                Periodic("the retention sweep", settings.sweep_interval, self.sweep),
            ],
            poll_interval=settings.poll_interval,
        )

    @property
    def completed(self) -> int:
        """Tasks this worker completed."""
        return self.attempts.completed

    def wake(self) -> None:
        """Claim tasks now instead of after the poll interval (call it in the loop's thread)."""
        self.loop.wake(COMPUTE, REMOTE)

    async def run(self, stop: asyncio.Event) -> None:
        # Everything this worker writes waits behind clients' writes (store/db.py).
        background_writes()
        # And its media work (probes, thumbnails, encodes) behind clients' requests for CPU.
        set_media_niceness(self.parts.settings.worker_media_nice)
        log.info(
            "worker %s started (concurrency %d compute, %d remote)",
            self.name,
            self.concurrency,
            self.remote_concurrency,
        )
        async with self.parts.queue.subscribe(self._notified):
            abandoned = await self.loop.run(stop)
        stuck = abandoned.get(COMPUTE, 0) + abandoned.get(REMOTE, 0)
        if stuck:
            self.stuck += stuck
            log.error(
                "worker %s: %d task(s) did not stop within the %g s grace period; their "
                "leases are handed back and their provider threads abandoned",
                self.name,
                stuck,
                self.shutdown_grace,
            )
        log.info("worker %s stopped", self.name)
        if self.stuck and self.exit_when_stuck:
            _exit_now(self.name, self.stuck)

    def _notified(self, provider: str) -> None:
        """A task was queued in some process (PostgreSQL NOTIFY): claim in its lane now."""
        if provider in self.remote_providers:
            self.loop.wake(REMOTE)
        elif provider in self.compute_providers:
            self.loop.wake(COMPUTE)

    def _task_finished(self) -> None:
        self.loop.wake(WebhookDeliverer.LANE)  # a finished task's webhook is due now

    def _task_lane(self, kind: str, providers: set[str], bound: int) -> Lane:
        spills = [
            s
            for s in self.parts.routes.spills()
            if s.target in providers and (self.models is None or s.model in self.models)
        ]

        async def claim(room: int) -> Claimed:
            # Each task's lease token is this prefix and its id: unique per attempt.
            prefix = f"{self.name[:40]}:{secrets.token_hex(3)}:"
            claimed = await self.parts.queue.claim_many(
                prefix,
                min(room, CLAIM_BATCH),
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
                providers=providers,
                models=self.models,
            )
            jobs = [
                (task.lease_owner or "", self.attempts.run(task, task.lease_owner or ""))
                for task in claimed
            ]
            # Room left: the queues of the routes before ours that waited past their max_wait
            # (overflow, docs/routing.md), each claim fenced like any other.
            for spill in spills:
                left = min(room, CLAIM_BATCH) - len(jobs)
                if left <= 0:
                    break
                spilled = await self.parts.queue.claim_many(
                    prefix,
                    left,
                    lease_seconds=self.settings.lease_seconds,
                    max_attempts=self.settings.max_attempts,
                    spill=spill,
                )
                for task in spilled:
                    token = task.lease_owner or ""
                    jobs.append((token, self._spilled(task, token, spill)))
            return jobs

        def on_stop(tokens: Collection[str]) -> None:
            self.attempts.stop(tokens, "shutdown")  # then cancelled after the grace period

        return Lane(
            kind,
            bound=bound,
            claim=claim,
            grace=self.shutdown_grace,
            cancel_wait=2,
            on_stop=on_stop,
        )

    async def _spilled(self, task: TaskRecord, token: str, spill: SpillClaim) -> None:
        """Run a task this worker's route took from the route before (overflow), where it
        serves the request exactly as asked; else hand it back to its route, to wait there
        another `max_wait`."""
        spec = GenerationSpec.model_validate(task.spec)
        if not self.parts.routes.admits(spill.target, spec):
            log.info(
                "task %s: route %s cannot serve it as asked; back to route %s",
                task.id,
                spill.target,
                spill.source,
            )
            await self.parts.queue.reroute(task.id, token, spill.source)
            return
        log.info(
            "task %s: waited over %g s on route %s; taken by route %s",
            task.id,
            spill.max_wait,
            spill.source,
            spill.target,
        )
        self.parts.metrics.route_spill(spill.model, spill.source, spill.target)
        await self.attempts.run(task, token)

    async def heartbeat(self) -> None:
        """One renewal of every lease this worker holds (a statement per chunk,
        `TaskQueue.heartbeat_many`, every `lease_seconds / 3`), then the attempts found lost
        or cancelled are told so."""
        contexts = list(self.attempts.contexts.values())
        if not contexts:
            return
        leases = [(ctx.task_id, ctx.token) for ctx in contexts]
        started = time.monotonic()
        since = started - self._renewed_at if self._renewed_at is not None else 0.0
        self._renewed_at = started
        owned = await self.parts.queue.heartbeat_many(
            leases, lease_seconds=self.settings.lease_seconds
        )
        took = time.monotonic() - started
        self.parts.metrics.lease_renewal(took)
        lost = 0
        running = self.attempts.contexts
        for ctx in contexts:
            if running.get(ctx.token) is not ctx:
                continue  # it ended during the renewal (its task completed, say): not lost
            if ctx.token not in owned:
                lost += ctx.stop_reason is None
                ctx.stop("lost")
            elif owned[ctx.token]:
                ctx.stop("cancel")
        lease = self.settings.lease_seconds
        if took > lease / 6 or since > lease * 2 / 3 or lost:
            # Due every lease/3: one this late or this slow leaves little of the lease.
            log.warning(
                "renewing %d leases took %.2f s, %.2f s after the previous renewal (leases "
                "last %g s, renewed every %g s); %d attempt(s) found their lease lost",
                len(leases),
                took,
                since,
                lease,
                lease / 3,
                lost,
            )

    async def flush(self) -> None:
        """Every `progress_flush_interval`: the progress of the attempts whose progress rose,
        in one grouped statement, and the client's cancel requests for any of them, from one
        read (a partial index of the running tasks asked to cancel)."""
        contexts = self.attempts.contexts
        if not contexts:
            return
        progress: dict[str, tuple[str, int]] = {}
        for ctx in contexts.values():
            pct = int(ctx.fraction * PROVIDER_SHARE)
            if pct > ctx.sent_progress:
                progress[ctx.token] = (ctx.task_id, pct)
        if progress:
            for token in await self.parts.queue.flush_progress(progress):
                if (sent := contexts.get(token)) is not None:
                    sent.sent_progress = progress[token][1]
        for token in await self.parts.queue.cancel_requests():
            if (asked := contexts.get(token)) is not None:
                asked.stop("cancel")

    async def reap(self) -> list[str]:
        """Fail the tasks whose leases expired after their last allowed attempt."""
        failed = await self.parts.queue.fail_exhausted(self.settings.max_attempts)
        for task_id in failed:
            log.warning("task %s failed: attempts exhausted", task_id)
        return failed

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
