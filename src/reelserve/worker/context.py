"""What one attempt at a task offers its provider (`RunContext`), and how an attempt is stopped.

A stop has a reason, set once: the client cancelled ("cancel", seen at a heartbeat), the worker
is shutting down ("shutdown"), or the lease was lost to another worker ("lost", seen at a
heartbeat or a refused checkpoint). The provider sees it at its next `check_cancelled()` as the
matching exception; the attempt (`worker/attempt.py`) turns that into the task's outcome.
Progress is kept here and written by the worker's batched heartbeat, not by the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reelserve.providers.base import InputImages, TaskCancelled, Withheld
from reelserve.store.queue import TaskQueue
from reelserve.worker.timers import Timers


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
    token: str  # this attempt's lease token: every write names it
    _queue: TaskQueue
    _checkpoint: dict[str, Any]
    can_fail_over: bool = False  # the task's model has a route after this one
    _fraction: float = 0.0
    _stop: str | None = None  # "cancel" | "shutdown" | "lost"
    sent_progress: int = -1  # the progress last written to the store
    _stopped_at: float | None = None  # time.monotonic() of the stop request
    withheld: list[Withheld] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _timers: Timers = field(default_factory=Timers)  # the worker's, shared by its attempts
    _waiting: asyncio.Future[None] | None = None  # the current `sleep`, woken by a stop
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)  # set by `stop`
    _loop: asyncio.AbstractEventLoop | None = None  # the attempt's loop, for `stop` from a thread

    def __post_init__(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

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
            waiting = self._waiting
        if waiting is not None:
            # Wake the wait now; from another thread, in the wait's own loop.
            waiting.get_loop().call_soon_threadsafe(_wake, waiting)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    async def wait_stopped(self) -> None:
        """Return once the attempt is asked to stop (no polling: `stop` sets an event)."""
        await self._stopped.wait()

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

    async def sleep(self, seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        """Wait `seconds`, or until `until` is done, as one entry in the worker's due-time heap
        (`worker/timers.py`); a stop ends the wait at once, raising as `check_cancelled`
        does."""
        self.check_cancelled()
        waiting = self._timers.wait(seconds)
        if until is not None:
            if until.done():
                waiting.cancel()
                return
            until.add_done_callback(lambda _: _wake(waiting))
        with self._lock:
            self._waiting = waiting
        try:
            await waiting
        finally:
            with self._lock:
                self._waiting = None
            waiting.cancel()  # leaves its heap entry to be dropped when due
        self.check_cancelled()

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
        if not await self._queue.checkpoint(self.task_id, self.token, self._checkpoint):
            self.stop("lost")
            raise LeaseLost(self.task_id)


def _wake(waiting: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        if not waiting.done():
            waiting.set_result(None)
