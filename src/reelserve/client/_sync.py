"""`Client`: the synchronous SDK."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

import reelserve
from reelserve.client._common import (
    DEFAULT_TIMEOUT,
    EVENT_RECONNECTS,
    ImageInput,
    NoEventStream,
    PollDelay,
    SSEDecoder,
    UpdateCallback,
    Updates,
    decode,
    describe,
    event_task,
    event_timeout,
    final,
    is_event_stream,
    new_idempotency_key,
    resolve_config,
    retry_delay_after,
    sample_paths,
    submission,
    submitted_id,
    task_id_of,
    task_of,
    time_left,
    video_url,
)
from reelserve.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    PermissionDeniedError,
)
from reelserve.client.types import Model, Task, TaskPage, Video

USER_AGENT = f"reelserve-python/{reelserve.__version__}"


class Client:
    """A reelserve server, synchronously.

        client = Client()  # REELSERVE_URL (default http://127.0.0.1:8000) and REELSERVE_KEY
        task = client.generate("sandbox", "a red kite over the sea", duration=2)
        client.download(task, "kite.mp4")

    Requests that fail on the way (connection errors, 429, 502-504) are retried up to
    `max_retries` times with backoff, honouring `Retry-After`; a submit is retried safely because
    it always carries an `Idempotency-Key`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url, self._api_key = resolve_config(base_url, api_key)
        self.max_retries = max_retries
        self._http = http_client or httpx.Client(timeout=timeout)
        self._owns_http = http_client is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "User-Agent": USER_AGENT,
            **(extra or {}),
        }

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        url = self._url(path)
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, url, json=json, params=params, headers=self._headers(headers)
                )
            except httpx.TransportError as exc:
                delay = retry_delay_after(
                    attempt, self.max_retries, idempotent=idempotent, error=exc
                )
                if delay is None:
                    raise APIConnectionError(f"{method} {url}: {describe(exc)}") from exc
            else:
                delay = retry_delay_after(
                    attempt, self.max_retries, idempotent=idempotent, response=response
                )
                if delay is None:
                    return decode(response)
            time.sleep(delay)
            attempt += 1

    # -- tasks -----------------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        duration: int | None = None,
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        first_frame_image: ImageInput | None = None,
        last_frame_image: ImageInput | None = None,
        seed: int | None = None,
        sample_count: int | None = None,
        generate_audio: bool | None = None,
        person_generation: str | None = None,
        resize_mode: str | None = None,
        enhance_prompt: bool | None = None,
        webhook_url: str | None = None,
        extra: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a generation; returns the task id. Parameters left out get the server's
        defaults. Images: an http(s) URL (fetched by the server), a data URL, or a local file
        (`pathlib.Path`) or bytes, sent as a data URL. `extra`: further JSON fields.
        `idempotency_key`: a retried submit with the same key (and body) returns the first
        task instead of queueing another (24 hours, per API key)."""
        body = submission(
            model,
            prompt,
            {
                "negative_prompt": negative_prompt,
                "duration": duration,
                "aspect_ratio": aspect_ratio,
                "resolution": resolution,
                "first_frame_image": first_frame_image,
                "last_frame_image": last_frame_image,
                "seed": seed,
                "sample_count": sample_count,
                "generate_audio": generate_audio,
                "person_generation": person_generation,
                "resize_mode": resize_mode,
                "enhance_prompt": enhance_prompt,
                "webhook_url": webhook_url,
            },
            extra,
        )
        key = idempotency_key or new_idempotency_key()
        answer = self._call(
            "POST", "v1/videos/generations", json=body, headers={"Idempotency-Key": key}
        )
        return submitted_id(answer)

    def get(self, task: Task | str) -> Task:
        """The task's current state."""
        return task_of(self._call("GET", f"v1/tasks/{quote(task_id_of(task), safe='')}"))

    def cancel(self, task: Task | str) -> Task:
        """Cancel a task: a pending one at once, a processing one as soon as its provider
        allows. A finished task raises `ConflictError`."""
        path = f"v1/tasks/{quote(task_id_of(task), safe='')}/cancel"
        return task_of(self._call("POST", path, idempotent=False))

    def list_page(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> TaskPage:
        """One page of this key's tasks, newest first."""
        params = {"status": status, "model": model, "limit": limit, "after": after}
        body = self._call("GET", "v1/tasks", params={k: v for k, v in params.items() if v})
        return TaskPage(
            tasks=[Task.from_dict(t) for t in body.get("data") or () if isinstance(t, dict)],
            has_more=body.get("has_more") is True,
            next_after=body.get("next_after"),
        )

    def list(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 20
    ) -> Iterator[Task]:
        """Every task of this key (optionally of one status or model), newest first, fetched
        page by page as the iteration goes."""
        after: str | None = None
        while True:
            page = self.list_page(status=status, model=model, limit=page_size, after=after)
            yield from page.tasks
            if not page.has_more or not page.next_after:
                return
            after = page.next_after

    def models(self) -> builtins.list[Model]:
        """The server's models and what each can do."""
        body = self._call("GET", "v1/models")
        return [Model.from_dict(m) for m in body.get("data") or () if isinstance(m, dict)]

    # -- waiting ---------------------------------------------------------------------------------

    def events(self, task: Task | str) -> Iterator[Task]:
        """The task's state as the server pushes it (`GET /v1/tasks/{id}/events`): the current
        state first, then each status or progress change; ends after the final state."""
        return self._events(task_id_of(task), None)

    def _events(self, task_id: str, deadline: float | None) -> Iterator[Task]:
        remaining = None if deadline is None else deadline - time.monotonic()
        url = self._url(f"v1/tasks/{quote(task_id, safe='')}/events")
        headers = self._headers({"Accept": "text/event-stream"})
        with self._http.stream(
            "GET", url, headers=headers, timeout=event_timeout(remaining)
        ) as response:
            if response.is_error or not is_event_stream(response):
                response.read()
                decode(response)
                raise NoEventStream(f"GET {url} did not answer with an event stream")
            decoder = SSEDecoder()
            for line in response.iter_lines():
                event = decoder.feed(line)
                task = event_task(event) if event is not None else None
                if task is not None:
                    yield task
                    if task.finished:
                        return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = 600.0,
        on_update: UpdateCallback | None = None,
        use_events: bool = True,
        poll_interval: float = 0.5,
        max_poll_interval: float = 5.0,
        raise_on_failure: bool = True,
    ) -> Task:
        """Block until the task finishes; returns it completed.

        Follows the server's event stream, reconnecting if it breaks, and falls back to polling
        (every `poll_interval` seconds, growing to `max_poll_interval`) where there is none.
        `on_update(task)` is called for every new status or progress. Raises `TaskFailed` /
        `TaskCancelled` for a task that ended so (unless `raise_on_failure=False`: then the
        task comes back in any final state), `WaitTimeout` after `timeout` seconds."""
        task_id = task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        updates = Updates(on_update)
        done = self._wait_events(task_id, deadline, timeout, updates) if use_events else None
        if done is None:
            delay = PollDelay(poll_interval, max(poll_interval, max_poll_interval))
            while True:
                current = self.get(task_id)
                updates.seen(current)
                if current.finished:
                    done = current
                    break
                left = time_left(task_id, deadline, timeout, updates)
                time.sleep(min(delay.next(), left))
        return final(done, raise_on_failure)

    def _wait_events(
        self, task_id: str, deadline: float | None, timeout: float | None, updates: Updates
    ) -> Task | None:
        """The finished task, or None to poll instead (no event stream here, or it kept
        breaking)."""
        failures = 0
        while failures < EVENT_RECONNECTS:
            try:
                for current in self._events(task_id, deadline):
                    updates.seen(current)
                    if current.finished:
                        return current
                failures += 1  # ended early (e.g. the server restarted): reconnect
            except (AuthenticationError, PermissionDeniedError):
                raise
            except (APIError, NoEventStream):
                return None  # no event stream (an unknown task: polling says so)
            except (httpx.TransportError, APIConnectionError):
                failures += 1
            left = time_left(task_id, deadline, timeout, updates)
            time.sleep(min(0.25 * failures, left))
        return None

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = 600.0,
        on_update: UpdateCallback | None = None,
        **params: Any,
    ) -> Task:
        """`submit` then `wait`: the completed task (`params` are `submit`'s)."""
        task_id = self.submit(model, prompt, **params)
        return self.wait(task_id, timeout=timeout, on_update=on_update)

    # -- files -----------------------------------------------------------------------------------

    def download(
        self,
        source: Task | Video | str,
        path: str | os.PathLike[str],
        *,
        index: int = 0,
    ) -> Path:
        """Save a result video (a completed task's sample `index`, a `Video`, or a file URL) to
        `path`, streamed; the file appears complete or not at all. File links need no API key,
        and none is sent with them."""
        url = video_url(source, index, self.base_url)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream(
                "GET", url, headers={"User-Agent": USER_AGENT}, follow_redirects=True
            ) as response:
                if response.is_error:
                    response.read()
                    decode(response)
                with part.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 16):
                        out.write(chunk)
            os.replace(part, target)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"GET {url}: {describe(exc)}") from exc
        finally:
            part.unlink(missing_ok=True)
        return target

    def download_all(self, task: Task, path: str | os.PathLike[str]) -> builtins.list[Path]:
        """Save every sample of a completed task: the first at `path`, the next ones beside it
        as `stem-1.ext`, `stem-2.ext`... (out.mp4, out-1.mp4, ...). Returns the paths."""
        video_url(task, 0, self.base_url)  # raises if there is nothing to download
        paths = sample_paths(path, len(task.videos))
        return [self.download(task, p, index=i) for i, p in enumerate(paths)]
