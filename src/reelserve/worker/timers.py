"""Waits by due time: one timer for all the attempts of a worker that are waiting.

A remote task spends nearly all its life waiting (the next poll of its upstream operation, a
backoff, its turn under a rate limit). Ten thousand of them, each a coroutine waking every
quarter second to look for a cancellation, cost a core. Here each wait is one entry in a heap
ordered by due time; a single loop timer is armed for the earliest entry, and when it fires
every entry due by then (within `SLACK`) is released in one pass. A stop (cancel, shutdown,
lease lost) releases its attempt's wait at once, so nothing needs to wake to notice it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

SLACK = 0.005  # entries due this soon after the timer fires are released with it


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Timers:
    """A due-time heap of waits, driven by one `loop.call_at` handle (per event loop)."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Waits not yet released (cancelled ones included until their due time)."""
        return len(self._heap)

    def wait(self, seconds: float) -> asyncio.Future[None]:
        """A future that resolves after `seconds` (monotonic); cancel it to give up early."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests run many): start afresh
            self._heap.clear()
            self._armed = None
            self._armed_for = float("inf")
            self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        due = time.monotonic() + max(0.0, seconds)
        heapq.heappush(self._heap, _Entry(due, next(self._seq), future))
        if due < self._armed_for:
            self._arm(loop, due)
        return future

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        # loop.time() is time.monotonic() on every asyncio loop; convert anyway.
        self._armed = loop.call_at(loop.time() + (due - time.monotonic()), self._fire)
        self._armed_for = due

    def _fire(self) -> None:
        self._armed = None
        self._armed_for = float("inf")
        heap = self._heap
        limit = time.monotonic() + SLACK
        while heap and heap[0].due <= limit:
            future = heapq.heappop(heap).future
            if not future.done():
                future.set_result(None)
        if heap and self._loop is not None:
            self._arm(self._loop, heap[0].due)
