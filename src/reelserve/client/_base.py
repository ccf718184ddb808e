"""`BaseClient`: everything `Client` and `AsyncClient` share, which is everything but I/O.

As in httpx, the base builds each request (URL, headers, body, idempotency key), says how to read
its answer (`Call`), judges whether a failed attempt is tried again and after how long, and
plans a download; the two clients only send, sleep and stream. A request is built with the
caller's own httpx client (`build_request`), so its default headers, cookies and timeout apply
as they would to `request()`."""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urljoin

import httpx

from reelserve import __version__
from reelserve.client._events import NoEventStream
from reelserve.client._submission import SubmitFields, check_fields, submission
from reelserve.client.errors import (
    APIConnectionError,
    ReelserveError,
    error_for,
    parse_retry_after,
)
from reelserve.client.types import Model, Task, TaskPage, Video

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
EVENT_READ_TIMEOUT = 60.0  # longer than the server's keep-alive interval (15 s by default)
USER_AGENT = f"reelserve-python/{__version__}"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited out: RateLimitError is raised

T = TypeVar("T")
HttpClient = TypeVar("HttpClient", httpx.Client, httpx.AsyncClient)


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


# -- answers -------------------------------------------------------------------------------------


def decode(response: httpx.Response) -> Any:
    """The JSON of a successful answer (read already), or the exception its error envelope
    describes."""
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


def refuse_stream(response: httpx.Response) -> None:
    """Raise for an events answer that is not a stream (read already): its error, or
    `NoEventStream`."""
    decode(response)
    raise NoEventStream(f"GET {response.request.url} did not answer with an event stream")


def event_timeout(deadline: float | None) -> httpx.Timeout:
    """An event stream's timeouts: a read may wait EVENT_READ_TIMEOUT, less when the deadline of
    a wait (a `time.monotonic()` value) comes sooner."""
    read = EVENT_READ_TIMEOUT
    if deadline is not None:
        read = max(0.05, min(EVENT_READ_TIMEOUT, deadline - time.monotonic()))
    return httpx.Timeout(DEFAULT_TIMEOUT, read=read)


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


def page_of(body: Any) -> TaskPage:
    return TaskPage(
        tasks=[Task.from_dict(t) for t in body.get("data") or () if isinstance(t, dict)],
        has_more=body.get("has_more") is True,
        next_after=body.get("next_after"),
    )


def models_of(body: Any) -> list[Model]:
    return [Model.from_dict(m) for m in body.get("data") or () if isinstance(m, dict)]


def next_after(page: TaskPage) -> str | None:
    """The `after` of the page that follows `page`, None after the last one."""
    return page.next_after if page.has_more and page.next_after else None


def task_id_of(task: Task | str) -> str:
    return task.id if isinstance(task, Task) else task


def connection_error(request: httpx.Request, exc: Exception) -> APIConnectionError:
    return APIConnectionError(f"{request.method} {request.url}: {str(exc) or type(exc).__name__}")


# -- retries -------------------------------------------------------------------------------------


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (0-based): exponential, with jitter."""
    delay: float = min(8.0, 0.5 * 2.0**attempt)
    return delay * (0.75 + random.random() / 2)


def retry_delay(attempt: int, response: httpx.Response) -> float | None:
    """Seconds before retrying after `response`: its `Retry-After`, else `backoff`; None when
    the answer must not be retried (a `Retry-After` longer than MAX_RETRY_AFTER)."""
    asked = parse_retry_after(response.headers.get("retry-after"))
    if asked is None:
        return backoff(attempt)
    return asked if asked <= MAX_RETRY_AFTER else None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, how to read its answer, and whether sending it twice is harmless
    (`idempotent`; a submit is, thanks to its `Idempotency-Key`; a cancel is not)."""

    request: httpx.Request
    answer: Callable[[Any], T]
    idempotent: bool = True

    def result(self, response: httpx.Response) -> T:
        """What the call returns, from its (read) answer; raises for an error answer."""
        return self.answer(decode(response))


@dataclass(frozen=True)
class Download:
    """A planned download: the request (no API key: file links are signed), where the file
    goes, and the partial file written first and renamed to `target` once complete."""

    request: httpx.Request
    target: Path
    part: Path


class BaseClient(Generic[HttpClient]):
    """Configuration and request building for `Client` (over an `httpx.Client`) and
    `AsyncClient` (over an `httpx.AsyncClient`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: HttpClient | None = None,
    ) -> None:
        self.base_url, self._api_key = resolve_config(base_url, api_key)
        self.max_retries = max_retries
        self._http: HttpClient = http_client or self._new_http(timeout)
        self._owns_http = http_client is None

    def _new_http(self, timeout: float) -> HttpClient:
        raise NotImplementedError

    # -- retries: the clients send, then ask ------------------------------------------------------

    def _delay_after(self, call: Call[T], attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before sending `call` again after its try `attempt` (0-based) was
        answered `response`, or None to take that answer. Retried: 429 / 502 / 503 / 504, a
        call that is not idempotent only on 429 (answered before anything was done)."""
        if attempt >= self.max_retries or response.status_code not in RETRY_STATUSES:
            return None
        if not call.idempotent and response.status_code != 429:
            return None
        return retry_delay(attempt, response)

    def _delay_after_error(self, call: Call[T], attempt: int, exc: httpx.TransportError) -> float:
        """Seconds to wait before sending `call` again after its try `attempt` failed on the
        way; `APIConnectionError` when it is not tried again (out of retries, or a call that is
        not idempotent and may have reached the server)."""
        reached = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if attempt >= self.max_retries or (reached and not call.idempotent):
            raise connection_error(call.request, exc) from exc
        return backoff(attempt)

    # -- requests --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        """A request to the API: the key and the SDK's User-Agent always go with it."""
        sent = {"Authorization": f"Bearer {self._api_key}", "User-Agent": USER_AGENT}
        return self._http.build_request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers={**sent, **(headers or {})},
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )

    def _submit_call(self, model: str, prompt: str, fields: SubmitFields) -> Call[str]:
        """Every submit carries an `Idempotency-Key` (the caller's, or one made for this call),
        so that retrying it never queues a second task. Reads local image files."""
        check_fields(fields, f"{type(self).__name__}.submit")
        body = submission(model, prompt, fields)
        key = fields.get("idempotency_key") or f"rsdk-{secrets.token_urlsafe(18)}"
        headers = {"Idempotency-Key": key}
        request = self._request("POST", "v1/videos/generations", json=body, headers=headers)
        return Call(request, submitted_id)

    def _get_call(self, task: Task | str) -> Call[Task]:
        return Call(self._request("GET", _task_path(task)), task_of)

    def _cancel_call(self, task: Task | str) -> Call[Task]:
        """Not idempotent: retried only when it never reached the server."""
        request = self._request("POST", _task_path(task, "/cancel"))
        return Call(request, task_of, idempotent=False)

    def _list_page_call(
        self, status: str | None, model: str | None, limit: int, after: str | None
    ) -> Call[TaskPage]:
        given = {"status": status, "model": model, "limit": limit, "after": after}
        params = {name: value for name, value in given.items() if value}
        return Call(self._request("GET", "v1/tasks", params=params), page_of)

    def _models_call(self) -> Call[list[Model]]:
        return Call(self._request("GET", "v1/models"), models_of)

    def _events_request(self, task: Task | str, deadline: float | None) -> httpx.Request:
        """The event stream of a task, its read timeout cut to what is left of a wait."""
        headers = {"Accept": "text/event-stream"}
        path = _task_path(task, "/events")
        return self._request("GET", path, headers=headers, timeout=event_timeout(deadline))

    def _plan_download(
        self, source: Task | Video | str, path: str | os.PathLike[str], index: int
    ) -> Download:
        request = self._http.build_request(
            "GET", video_url(source, index, self.base_url), headers={"User-Agent": USER_AGENT}
        )
        target = Path(path)
        return Download(request, target, target.with_name(f".{target.name}.part"))

    def _sample_paths(self, task: Task, path: str | os.PathLike[str]) -> list[Path]:
        """Where `download_all` saves each sample; raises when there is nothing to download."""
        video_url(task, 0, self.base_url)
        return sample_paths(path, len(task.videos))


def _task_path(task: Task | str, suffix: str = "") -> str:
    return f"v1/tasks/{quote(task_id_of(task), safe='')}{suffix}"


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
