"""Reading a task's event stream (`GET /v1/tasks/{id}/events`, Server-Sent Events) without doing
any I/O: the clients hand the lines they receive to an `EventReader` and yield what it returns."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from reelserve.client.errors import APIConnectionError
from reelserve.client.types import Task


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """The `text/event-stream` format, one line at a time (comments and `retry:` ignored)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._id)
            self.last_id = self._id if self._id is not None else self.last_id
            self._event, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def event_task(event: ServerSentEvent) -> Task | None:
    """The task view an event carries (reelserve sends it as the data of every event)."""
    try:
        data = json.loads(event.data)
    except ValueError:
        return None
    return Task.from_dict(data) if isinstance(data, dict) and "status" in data else None


class EventReader:
    """The task states in an event stream, line by line. `done` turns true once the task has
    finished or `deadline` (a `time.monotonic()` value, None for none) has passed: the client
    then stops reading."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.done = False
        self._decoder = SSEDecoder()

    def feed(self, line: str) -> Task | None:
        event = self._decoder.feed(line)
        task = event_task(event) if event is not None else None
        if task is not None and task.finished:
            self.done = True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.done = True
        return task


class NoEventStream(APIConnectionError):
    """The events URL answered, but not with an event stream (a server or proxy without it)."""


def is_event_stream(response: httpx.Response) -> bool:
    """Whether `response` is a stream to read (else the client reads the body and passes the
    response to `refuse_stream`)."""
    content_type: str = response.headers.get("content-type", "")
    return not response.is_error and content_type.startswith("text/event-stream")
