"""Waiting by due time (issue 11, point 3): one timer heap for all of a worker's waits.

- `Timers` releases waits in due order, each once, and never a cancelled one.
- `RunContext.sleep` in a real worker: a hundred remote tasks wait an hour each; a client's
  cancel ends its task's wait at once (at the next lease renewal, not after the hour), the
  others keep waiting, and a shutdown hands every one back promptly.
- The credential pool's line: a freed slot goes to the first waiter, and a waiter that stops
  while waiting does not keep a slot handed to it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path
from typing import Any

from reelserve.core import Reelserve
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import TaskStatus
from reelserve.providers.base import Clip, ProviderBase, RunContext
from reelserve.providers.google_veo.credentials import Credential, CredentialPool
from reelserve.providers.google_veo.rules import GEMINI
from reelserve.worker.runner import Worker
from reelserve.worker.timers import Timers
from tests.support import make_settings


async def test_waits_are_released_in_due_order_and_cancelled_ones_never() -> None:
    timers = Timers()
    rng = random.Random(11)
    released: list[float] = []
    futures = []
    for _ in range(300):
        delay = rng.uniform(0, 0.3)
        due = time.monotonic() + delay  # the timer's own due time is microseconds later
        future = timers.wait(delay)
        future.add_done_callback(lambda f, d=due: None if f.cancelled() else released.append(d))
        futures.append((due, future))
    created = time.monotonic()  # every wait is due by created + 0.3
    dropped = [f for i, (_, f) in enumerate(futures) if i % 3 == 0]
    for future in dropped:
        future.cancel()
    await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    assert time.monotonic() >= max(d for d, _ in futures) - 0.01
    expected = [d for i, (d, _) in enumerate(futures) if i % 3 != 0]
    assert sorted(released) == sorted(expected)  # each live wait once, no cancelled one
    # In due order (by due time, not delay: creating 300 waits takes a while under load), up to
    # the timer's slack (waits due within it are released together).
    assert all(b >= a - 0.006 for a, b in itertools.pairwise(released))
    # The cancelled waits due last are dropped when the timer reaches them.
    await asyncio.sleep(max(0.0, created + 0.35 - time.monotonic()))
    assert len(timers) == 0


class Waiter(ProviderBase):
    """A remote provider whose tasks wait an hour in `ctx.sleep`, as between two polls."""

    name = "sandbox"
    kind = "remote"

    def __init__(self) -> None:
        self.waiting = 0
        self.ended: dict[str, str] = {}

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        self.waiting += 1
        try:
            await ctx.sleep(3600)
        except Exception as exc:
            self.ended[ctx.task_id] = type(exc).__name__
            raise
        finally:
            self.waiting -= 1
        raise AssertionError("an hour passed")


async def test_a_stop_ends_a_tasks_wait_at_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", lease_seconds=3.0, worker_remote_concurrency=200)
    service = await Reelserve.open(settings)
    provider = Waiter()
    service.providers["sandbox"] = provider
    key, _, _ = await service.access.create_key("test")
    ids = [
        (await service.tasks.submit(key, {"model": "sandbox", "prompt": f"p{i}", "duration": 1})).id
        for i in range(100)
    ]
    stop = asyncio.Event()
    worker = Worker(service.worker_parts())
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 60
        while provider.waiting < 100:
            assert time.monotonic() < deadline, f"only {provider.waiting} tasks started"
            await asyncio.sleep(0.05)
        assert len(worker.attempts.timers) >= 100  # one heap entry per waiting task

        cancelled_at = time.monotonic()
        await service.tasks.cancel(key, ids[0])
        while (await service.tasks.get(key, ids[0])).status is not TaskStatus.CANCELLED:
            # Seen at the next lease renewal (every lease_seconds / 3), not after the hour.
            assert time.monotonic() - cancelled_at < 5, "the cancel did not end the wait"
            await asyncio.sleep(0.05)
        assert provider.ended == {ids[0]: "TaskCancelled"}
        assert provider.waiting == 99
    finally:
        stopping = time.monotonic()
        stop.set()
        await asyncio.wait_for(running, 30)
    assert time.monotonic() - stopping < 10
    assert set(provider.ended.values()) == {"TaskCancelled", "WorkerShutdown"}
    assert len(provider.ended) == 100
    for task_id in ids[1:]:
        task = await service.tasks.get(key, task_id)
        # Handed back: no owner, claimable by the next worker at once.
        assert task.lease_owner is None and task.releases == 1, task
    await service.close()


def _credential(max_concurrency: int) -> Credential:
    return Credential(
        id="k1",
        backend=GEMINI,
        api_key="AIza-pool-test",
        max_concurrency=max_concurrency,
    )


async def _wait(seconds: float, until: asyncio.Future[Any] | None = None) -> None:
    """A stand-in for `RunContext.sleep`: the time, or `until` done, whichever is first."""
    if until is None:
        await asyncio.sleep(seconds)
    else:
        await asyncio.wait([until], timeout=seconds)


async def test_a_freed_slot_goes_to_the_first_waiter_in_line() -> None:
    cred = _credential(max_concurrency=1)
    pool = CredentialPool([cred])
    assert await pool.acquire(lambda c: True, set(), _wait) is cred
    order: list[int] = []

    async def take(i: int) -> None:
        got = await pool.acquire(lambda c: True, set(), _wait)
        assert got is cred
        order.append(i)

    waiters = []
    for i in range(5):
        waiters.append(asyncio.create_task(take(i)))
        await asyncio.sleep(0.01)  # queue them in this order
    for _ in range(5):
        pool.release(cred)
        await asyncio.sleep(0.01)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    assert cred.in_flight == 1  # the last waiter holds it; every release handed it on
    pool.release(cred)
    assert cred.in_flight == 0


async def test_a_waiter_that_stops_does_not_keep_a_slot() -> None:
    cred = _credential(max_concurrency=1)
    pool = CredentialPool([cred])
    await pool.acquire_pinned(cred, _wait)
    waiter = asyncio.create_task(pool.acquire_pinned(cred, _wait))
    await asyncio.sleep(0.01)
    waiter.cancel()  # the task stops while in line
    await asyncio.gather(waiter, return_exceptions=True)
    pool.release(cred)
    assert cred.in_flight == 0  # nobody in line: the slot is free, not handed to the gone waiter
