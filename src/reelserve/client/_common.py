"""What the sync and async clients share: configuration, request bodies, answer parsing, the
Server-Sent Events decoder, retry and polling delays. No network I/O happens here (`image_value`
reads local image files)."""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urljoin

import httpx

from reelserve.client.errors import (
    APIConnectionError,
    ReelserveError,
    TaskCancelled,
    TaskFailed,
    WaitTimeout,
    error_for,
    parse_retry_after,
)
from reelserve.client.types import Task, Video

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited out: RateLimitError is raised
EVENT_READ_TIMEOUT = 60.0  # longer than the server's keep-alive interval (15 s by default)
EVENT_RECONNECTS = 3  # broken event streams before `wait` falls back to polling

ImageInput: TypeAlias = "str | bytes | os.PathLike[str]"
UpdateCallback: TypeAlias = Callable[[Task], Any]


def resolve_config(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """Arguments first, then `REELSERVE_URL` / `REELSERVE_KEY`, then the local default URL."""
    url = base_url or os.environ.get("REELSERVE_URL") or DEFAULT_URL
    key = api_key or os.environ.get("REELSERVE_KEY")
    if not key:
        raise ReelserveError(
            "no API key: pass api_key=... or set REELSERVE_KEY (`reelserve keys create --test` "
            "mints one)"
        )
    return url.rstrip("/") + "/", key


# -- images --------------------------------------------------------------------------------------


def sniff_image(data: bytes) -> str | None:
    """The MIME type of JPEG, PNG or WebP bytes (what the server accepts), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data_url(data: bytes, *, name: str = "image") -> str:
    """`data:image/...;base64,...` for image bytes, the type detected from the content."""
    mime = sniff_image(data)
    if mime is None:
        raise ValueError(f"{name} must be a JPEG, PNG or WebP image (its content is not one)")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_value(value: ImageInput, name: str) -> str:
    """A request's image field: an http(s) or data URL as given; a local file path
    (`pathlib.Path` or `os.PathLike`) or raw bytes as a data URL."""
    if isinstance(value, bytes):
        return image_data_url(value, name=name)
    if isinstance(value, str):
        return value
    path = Path(os.fspath(value))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    return image_data_url(data, name=f"{name} ({path})")


def submission(
    model: str, prompt: str, params: Mapping[str, Any], extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The JSON body of a submit: given values only (the server applies its defaults)."""
    body: dict[str, Any] = dict(extra or {})
    body["model"] = model
    body["prompt"] = prompt
    for name, value in params.items():
        if value is None:
            continue
        if name in ("first_frame_image", "last_frame_image"):
            value = image_value(value, name)
        body[name] = value
    return body


def new_idempotency_key() -> str:
    return f"rsdk-{secrets.token_urlsafe(18)}"


# -- answers -------------------------------------------------------------------------------------


def decode(response: httpx.Response) -> Any:
    """The JSON of a successful answer, or the exception its error envelope describes."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_error:
        raise error_for(response.status_code, body, dict(response.headers))
    if body is None:
        raise APIConnectionError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} with a body that is not JSON"
        )
    return body


def task_of(body: Any) -> Task:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise APIConnectionError("the answer has no task in its `data`")
    return Task.from_dict(data)


def submitted_id(body: Any) -> str:
    items = body.get("data") if isinstance(body, dict) else None
    if isinstance(items, list) and items and isinstance(items[0], dict):
        task_id = items[0].get("task_id")
        if isinstance(task_id, str):
            return task_id
    raise APIConnectionError("the submit answer has no `data[0].task_id`")


def task_id_of(task: Task | str) -> str:
    return task.id if isinstance(task, Task) else task


def final(task: Task, raise_on_failure: bool) -> Task:
    if raise_on_failure and task.status == "failed":
        raise TaskFailed(task)
    if raise_on_failure and task.status == "cancelled":
        raise TaskCancelled(task)
    return task


def video_url(source: Task | Video | str, index: int, base_url: str) -> str:
    if isinstance(source, Task):
        if not source.videos:
            raise ReelserveError(
                f"task {source.id} has no videos to download (status {source.status})"
            )
        if not 0 <= index < len(source.videos):
            raise ReelserveError(
                f"task {source.id} has {len(source.videos)} videos; no index {index}"
            )
        if source.expired:
            raise ReelserveError(f"task {source.id}'s files have expired (past result_ttl)")
        source = source.videos[index]
    url = source.url if isinstance(source, Video) else source
    if not url:
        raise ReelserveError("the video has no URL")
    return urljoin(base_url, url)


def sample_paths(path: str | os.PathLike[str], count: int) -> list[Path]:
    """Where `download_all` saves `count` samples: `path` itself, then `stem-1.ext`,
    `stem-2.ext`... beside it (out.mp4, out-1.mp4, out-2.mp4)."""
    first = Path(path)
    return [first] + [first.with_name(f"{first.stem}-{i}{first.suffix}") for i in range(1, count)]


def retry_delay(attempt: int, response: httpx.Response | None) -> float | None:
    """Seconds before retry `attempt` (0-based), or None when the answer must not be retried
    (a `Retry-After` longer than MAX_RETRY_AFTER)."""
    if response is not None:
        asked = parse_retry_after(response.headers.get("retry-after"))
        if asked is not None:
            return asked if asked <= MAX_RETRY_AFTER else None
    backoff: float = min(8.0, 0.5 * 2.0**attempt)
    return backoff * (0.75 + random.random() / 2)


@dataclass
class PollDelay:
    """Polling backoff: starts at `initial`, grows by `factor` up to `maximum`."""

    initial: float = 0.5
    maximum: float = 5.0
    factor: float = 1.5
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.maximum, self.current * self.factor)
        return delay


class Updates:
    """Calls `on_update` once per distinct (status, progress) seen by `wait`."""

    def __init__(self, callback: UpdateCallback | None) -> None:
        self.callback = callback
        self.last: Task | None = None

    def seen(self, task: Task) -> Any:
        """The callback's return value (an awaitable for async callbacks), or None when the
        state did not change."""
        previous = self.last
        self.last = task
        if previous is not None and (previous.status, previous.progress) == (
            task.status,
            task.progress,
        ):
            return None
        return self.callback(task) if self.callback is not None else None


# -- Server-Sent Events --------------------------------------------------------------------------


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


def event_timeout(remaining: float | None) -> httpx.Timeout:
    read = (
        EVENT_READ_TIMEOUT if remaining is None else max(0.05, min(EVENT_READ_TIMEOUT, remaining))
    )
    return httpx.Timeout(DEFAULT_TIMEOUT, read=read)


class NoEventStream(APIConnectionError):
    """The events URL answered, but not with an event stream (a server or proxy without it)."""


def is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def retry_delay_after(
    attempt: int,
    max_retries: int,
    *,
    idempotent: bool,
    error: Exception | None = None,
    response: httpx.Response | None = None,
) -> float | None:
    """Seconds to wait before trying a request again, or None to give up now.

    Retried: connection failures (a non-idempotent request only when it was never sent) and
    answers 429 / 502 / 503 / 504 (a non-idempotent request only on 429, which the server
    answers before doing anything), at most `max_retries` times."""
    if attempt >= max_retries:
        return None
    if error is not None:
        sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        if sent and not idempotent:
            return None
        return retry_delay(attempt, None)
    if response is None or response.status_code not in RETRY_STATUSES:
        return None
    if not idempotent and response.status_code != 429:
        return None
    return retry_delay(attempt, response)


def describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def time_left(
    task_id: str, deadline: float | None, timeout: float | None, updates: Updates
) -> float:
    """Seconds left before `deadline` (a day when there is none); `WaitTimeout` when none."""
    if deadline is None:
        return 86400.0
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(task_id, timeout or 0.0, updates.last)
    return left
