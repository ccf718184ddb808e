"""The claim loop every worker runs: task attempts and webhook deliveries alike.

Work comes in *lanes*, each with its own bound: a worker's compute tasks, its remote tasks and
its webhook deliveries. The loop claims in every lane that wants work and has room (a claim may
take several items at once, up to the room left), and again while claims succeed (until the
lane is full or finds nothing), then sleeps
until a lane is woken (a submit in this process, a NOTIFY, a finished job freeing a slot, a
finished task's webhook) or the poll interval passes, which wakes every lane. It never waits on
the jobs themselves: a job's end wakes its lane through a done-callback, so thousands of jobs in
flight cost nothing per wake-up.

A lane's wake-up flag is cleared just before its claim, so a wake that comes while the claim
runs is not lost: the next round claims again.

Beside the loop run small periodic jobs (lease renewal, the reaper of exhausted tasks, the
retention sweep). Each runs on its own interval, and a failure is logged with its traceback and
retried at the next interval: it never ends the loop or another job.

On stop the loop claims nothing more and drains every lane at once: the lane's `on_stop` tells
its jobs (a task's provider is asked to stop), the jobs get the lane's `grace` seconds to end,
and those still running are cancelled (a job hands its lease back on cancellation). The
periodic jobs run until the drain is over, so leases stay renewed while jobs wind down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("reelserve.worker")

# What a claim took: per job, its key (its lease token) and the coroutine that runs it; empty
# when nothing is due.
Claimed = list[tuple[str, Coroutine[Any, Any, None]]]


@dataclass
class Lane:
    """One kind of work, claimed up to its own bound. `claim(room)` takes at most `room` items
    (each with a lease) and returns the coroutines that work on them, keyed by lease token."""

    name: str
    bound: int
    claim: Callable[[int], Awaitable[Claimed]]
    grace: float  # seconds a job may take to end after the stop, before it is cancelled
    cancel_wait: float  # seconds to let a cancelled job hand its lease back
    on_stop: Callable[[Collection[str]], None] | None = None  # given the running jobs' keys
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    wanted: bool = True  # claim at the next round (woken, or the last claim found work)

    @property
    def full(self) -> bool:
        return len(self.running) >= self.bound


@dataclass(frozen=True)
class Periodic:
    """A job run every `interval` seconds beside the loop (first at the start, unless
    `at_start` is false); `what` names it in the log when it fails. The interval runs from the
    end of one run to the start of the next, unless `fixed_rate`: then from start to start, so
    that a slow run does not push every later one back (a lease renewal that took 5 s of a
    10 s interval still comes every 10 s); a run that overran its interval is followed by the
    next at once, never by several to catch up."""

    what: str
    interval: float
    job: Callable[[], Awaitable[object]]
    at_start: bool = True
    fixed_rate: bool = False


class ClaimLoop:
    def __init__(
        self, lanes: Sequence[Lane], periodic: Sequence[Periodic], *, poll_interval: float
    ) -> None:
        self.lanes = {lane.name: lane for lane in lanes}
        self.periodic = list(periodic)
        self.poll_interval = poll_interval
        self._event = asyncio.Event()

    def wake(self, *names: str) -> None:
        """Claim now in the named lanes (all where none is named) instead of after the poll
        interval. Call it from the loop's thread."""
        for name in names or self.lanes:
            if (lane := self.lanes.get(name)) is not None:
                lane.wanted = True
        self._event.set()

    def running(self, name: str) -> int:
        """How many jobs of the lane `name` are in flight."""
        lane = self.lanes.get(name)
        return len(lane.running) if lane is not None else 0

    async def run(self, stop: asyncio.Event) -> dict[str, int]:
        """Claim and run until `stop` is set, then drain; the number of jobs each lane had to
        cancel because they outlived its grace period."""
        timers = [asyncio.create_task(_every(p)) for p in self.periodic]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._event.clear()
                for lane in self.lanes.values():
                    if lane.wanted and not lane.full:
                        await self._claim(lane)
                if any(lane.wanted and not lane.full for lane in self.lanes.values()):
                    continue
                woken = asyncio.ensure_future(self._event.wait())
                done, _ = await asyncio.wait(
                    {stopping, woken},
                    timeout=self.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                if not done:  # the poll interval passed: look in every lane
                    self.wake()
        finally:
            stopping.cancel()
            try:
                drained = await asyncio.gather(*(_drain(lane) for lane in self.lanes.values()))
            finally:
                for timer in timers:
                    timer.cancel()
                await asyncio.gather(*timers, return_exceptions=True)
        return dict(zip(self.lanes, drained, strict=True))

    async def _claim(self, lane: Lane) -> None:
        lane.wanted = False  # cleared before claiming: a wake during the claim counts
        try:
            claimed = await lane.claim(lane.bound - len(lane.running))
        except Exception:
            log.exception("claiming %s failed; will retry", lane.name)
            return
        for key, work in claimed:
            self._start(lane, key, work)
        if claimed:
            lane.wanted = True  # claim until the lane is full or finds nothing

    def _start(self, lane: Lane, key: str, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(work)
        lane.running[key] = job

        def _done(_: asyncio.Task[None]) -> None:
            if lane.running.get(key) is job:
                del lane.running[key]
            self.wake(lane.name)  # a slot is free: claim again

        job.add_done_callback(_done)


async def _every(periodic: Periodic) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + (0.0 if periodic.at_start else periodic.interval)
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            await periodic.job()
        except Exception:
            log.exception("%s failed; will retry in %g s", periodic.what, periodic.interval)
        now = loop.time()
        due = max(due + periodic.interval, now) if periodic.fixed_rate else now + periodic.interval


async def _drain(lane: Lane) -> int:
    """Stop the lane's jobs: ask them (`on_stop`), wait `grace`, cancel the rest; how many
    had to be cancelled."""
    if not lane.running:
        return 0
    if lane.on_stop is not None:
        lane.on_stop(list(lane.running))
    _, pending = await asyncio.wait(list(lane.running.values()), timeout=lane.grace)
    for job in pending:
        job.cancel()
    if pending:
        with contextlib.suppress(Exception):
            await asyncio.wait(pending, timeout=lane.cancel_wait)
    return len(pending)
