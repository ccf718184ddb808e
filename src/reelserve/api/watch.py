"""Live task updates for event streams (`GET /v1/tasks/{id}/events`), from the store.

A task may run in any worker process, so its changes are read from the database, where every
worker writes them. One `TaskWatcher` per API process reads all watched tasks in a single query
each `interval` (one query per tick, however many streams are open) and hands each stream the
rows whose status or progress moved. A stream that ends (its task finished, or its client went
away) unregisters at once, and the watcher's loop stops when no stream is left.

`TaskEvents` is one client's view of this: the task's current state first, then each change,
ending with the final state. The HTTP route only formats what it yields as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from reelserve.core import Reelserve
from reelserve.domain.result import TaskView
from reelserve.domain.task import TaskStatus
from reelserve.metrics import Metrics
from reelserve.store.keys import ApiKey

log = logging.getLogger("reelserve.api.watch")

State = tuple[TaskStatus, int]


def _state(task: TaskView) -> State:
    return task.status, task.progress


@dataclass(eq=False)
class _Watch:
    """One registered interest in one task: the newest row seen that differs from the last one
    handed over. Intermediate rows are coalesced (a slow client sees the latest state)."""

    task_id: str
    last: State
    latest: TaskView | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def offer(self, task: TaskView) -> None:
        if _state(task) != self.last:
            self.last = _state(task)
            self.latest = task
            self.changed.set()

    def take(self) -> TaskView | None:
        task, self.latest = self.latest, None
        self.changed.clear()
        return task

    def close(self) -> None:
        self.closed = True
        self.changed.set()


class TaskWatcher:
    """The shared store reader behind every event stream of one process."""

    def __init__(self, service: Reelserve, *, interval: float, metrics: Metrics | None = None):
        self.service = service
        self.interval = interval
        self.metrics = metrics
        self._watches: dict[str, set[_Watch]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def open_streams(self) -> int:
        return sum(len(w) for w in self._watches.values())

    def _add(self, task: TaskView) -> _Watch:
        watch = _Watch(task.id, _state(task))
        if self._closed:
            watch.close()
            return watch
        self._watches.setdefault(task.id, set()).add(watch)
        self._gauge()
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="reelserve-task-watcher")
        return watch

    def _remove(self, watch: _Watch) -> None:
        group = self._watches.get(watch.task_id)
        if group is not None:
            group.discard(watch)
            if not group:
                del self._watches[watch.task_id]
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.event_streams.set(self.open_streams)

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                await asyncio.sleep(min(self.interval * 2**failures, 5.0))
                if not self._watches:
                    break
                try:
                    rows = await self.service.queue.views(list(self._watches))
                except Exception:
                    if not failures:
                        log.exception("reading watched tasks failed; retrying")
                    failures = min(failures + 1, 8)
                    continue
                failures = 0
                for task_id, task in rows.items():
                    for watch in self._watches.get(task_id, ()):
                        watch.offer(task)
        finally:
            # No await between the emptiness check and this: a stream added later starts a
            # new loop.
            self._loop = None

    async def close(self) -> None:
        """Stop the loop and end every open stream (server shutdown)."""
        self._closed = True
        for group in self._watches.values():
            for watch in group:
                watch.close()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def open(self, key: ApiKey, task_id: str, base_url: str) -> TaskEvents:
        """A stream of one of the caller's tasks; `NotFound` (before anything is streamed) for
        an unknown task or another key's."""
        task = await self.service.tasks.get(key, task_id)
        return TaskEvents(self, task.view(), base_url)


@dataclass(frozen=True)
class TaskEvent:
    """`name` is "status" for the first event and every status change, "progress" when only
    the progress moved; `view` is the task's JSON view, as `GET /v1/tasks/{id}` answers it."""

    name: str
    view: dict[str, Any]
    final: bool


class TaskEvents:
    """One client's stream of one task: its state now, then every change, ending with the
    final state. Close it (or use it as an async context manager) to unregister; nothing is
    registered before the first wait for a change."""

    def __init__(self, watcher: TaskWatcher, task: TaskView, base_url: str) -> None:
        self._watcher = watcher
        self._service = watcher.service
        self._base_url = base_url
        self._pending: TaskView | None = task  # the first event, not yet handed out
        self._last = task
        self._sent = False
        self._watch: _Watch | None = None
        self.done = False

    async def __aenter__(self) -> TaskEvents:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.done = True
        if self._watch is not None:
            self._watcher._remove(self._watch)
            self._watch = None

    async def next(self, keepalive: float) -> TaskEvent | None:
        """The next event, or None when nothing changed within `keepalive` seconds (time for a
        keep-alive). After the final event (or at server shutdown) `done` is true."""
        if self.done:
            return None
        task, self._pending = self._pending, None
        if task is None:
            if self._watch is None:
                self._watch = self._watcher._add(self._last)
            watch = self._watch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), keepalive)
            if watch.closed:
                self.close()
                return None
            task = watch.take()
            if task is None:
                return None
        name = "status" if not self._sent or task.status is not self._last.status else "progress"
        self._sent = True
        self._last = task
        final = task.status.finished
        view = await self._service.tasks.render(task, self._base_url)
        if final:
            self.close()
        return TaskEvent(name, view, final)
