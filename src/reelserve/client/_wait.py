"""The decisions of `wait`, for both clients: what is new enough to report, how long is left,
when to follow the event stream again and when to give it up for polling, how long to sleep
between polls, and what to return or raise at the end. The clients only fetch and sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeAlias

import httpx

from reelserve.client._events import NoEventStream
from reelserve.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    PermissionDeniedError,
    TaskCancelled,
    TaskFailed,
    WaitTimeout,
)
from reelserve.client.types import Task

UpdateCallback: TypeAlias = Callable[[Task], Any]
EVENT_RECONNECTS = 3  # broken event streams before `wait` falls back to polling
NO_DEADLINE_SLEEP = 86400.0  # the longest sleep when there is no deadline


class PollDelay:
    """Polling backoff: starts at `initial`, grows by `factor` up to `maximum`."""

    def __init__(self, initial: float, maximum: float, factor: float = 1.5) -> None:
        self.current = initial
        self.maximum = max(initial, maximum)
        self.factor = factor

    def next(self) -> float:
        delay = self.current
        self.current = min(self.maximum, self.current * self.factor)
        return delay


class Waiter:
    """One `wait(task, ...)`: its arguments, the last state seen and the reconnects so far.

    A client feeds it every state it fetches (`seen`) and asks it how long to sleep
    (`reconnect_delay`, `poll_delay`); `done` is the finished task once there is one, and
    `result()` the answer of `wait`."""

    def __init__(
        self,
        task: Task | str,
        timeout: float | None,
        on_update: UpdateCallback | None,
        poll_interval: float,
        max_poll_interval: float,
        raise_on_failure: bool,
    ) -> None:
        self.task_id = task.id if isinstance(task, Task) else task
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.last: Task | None = None
        self._on_update = on_update
        self._polls = PollDelay(poll_interval, max_poll_interval)
        self._raise_on_failure = raise_on_failure
        self._failures = 0

    @property
    def done(self) -> Task | None:
        """The finished task, once one was seen."""
        return self.last if self.last is not None and self.last.finished else None

    def seen(self, task: Task) -> Any:
        """Record a state; `on_update(task)`'s return value (an awaitable for a coroutine
        function) when the status or progress changed, else None."""
        previous, self.last = self.last, task
        if previous is not None and (previous.status, previous.progress) == (
            task.status,
            task.progress,
        ):
            return None
        return self._on_update(task) if self._on_update is not None else None

    def time_left(self) -> float:
        """Seconds before the deadline; `WaitTimeout` (with the last state seen) when none."""
        if self.deadline is None:
            return NO_DEADLINE_SLEEP
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(self.task_id, self.timeout or 0.0, self.last)
        return left

    def reconnect_delay(self, error: Exception | None = None) -> float | None:
        """The event stream ended (`error` None) or failed with `error`: seconds to sleep before
        following it again, or None to stop following it (the task finished, the server has no
        stream for it, or it broke EVENT_RECONNECTS times: `wait` polls then). A refused key
        and anything but a broken connection are raised."""
        if self.done is not None:
            return None
        if isinstance(error, APIError | NoEventStream) and not isinstance(
            error, AuthenticationError | PermissionDeniedError
        ):
            return None  # no event stream (an unknown task: polling says so)
        if error is not None and not isinstance(error, httpx.TransportError | APIConnectionError):
            raise error
        self._failures += 1  # broke, or ended early (the server restarted)
        if self._failures >= EVENT_RECONNECTS:
            return None
        return min(0.25 * self._failures, self.time_left())

    def poll_delay(self) -> float:
        """Seconds to sleep before the next poll: `poll_interval`, growing by half up to
        `max_poll_interval`, and never past the deadline."""
        left = self.time_left()
        return min(self._polls.next(), left)

    def result(self) -> Task:
        """The finished task; `TaskFailed` / `TaskCancelled` for one that ended so, unless
        `raise_on_failure` is false."""
        task = self.done
        if task is None:
            raise RuntimeError("wait has no finished task yet")
        if self._raise_on_failure and task.status == "failed":
            raise TaskFailed(task)
        if self._raise_on_failure and task.status == "cancelled":
            raise TaskCancelled(task)
        return task
