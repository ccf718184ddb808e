"""`AsyncClient`: the asyncio SDK (the same surface as `Client`, awaited)."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

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
from reelserve.client._sync import USER_AGENT
from reelserve.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    PermissionDeniedError,
)
from reelserve.client.types import Model, Task, TaskPage, Video


class AsyncClient:
    """A reelserve server, from asyncio code.

        async with AsyncClient() as client:
            task_id = await client.submit("sandbox", "a red kite over the sea", duration=2)
            task = await client.wait(task_id, on_update=lambda t: print(t.progress))
            await client.download(task, "kite.mp4")

    `on_update` may be a plain function or a coroutine function. Retries as `Client` does."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url, self._api_key = resolve_config(base_url, api_key)
        self.max_retries = max_retries
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http_client is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- plumbing --------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "User-Agent": USER_AGENT,
            **(extra or {}),
        }

    async def _call(
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
                response = await self._http.request(
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
            await asyncio.sleep(delay)
            attempt += 1

    # -- tasks -----------------------------------------------------------------------------------

    async def submit(
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
        """Queue a generation; returns the task id (see `Client.submit`). Local image files
        are read in a thread."""
        params = {
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
        }
        body = await asyncio.to_thread(submission, model, prompt, params, extra)
        key = idempotency_key or new_idempotency_key()
        answer = await self._call(
            "POST", "v1/videos/generations", json=body, headers={"Idempotency-Key": key}
        )
        return submitted_id(answer)

    async def get(self, task: Task | str) -> Task:
        return task_of(await self._call("GET", f"v1/tasks/{quote(task_id_of(task), safe='')}"))

    async def cancel(self, task: Task | str) -> Task:
        path = f"v1/tasks/{quote(task_id_of(task), safe='')}/cancel"
        return task_of(await self._call("POST", path, idempotent=False))

    async def list_page(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> TaskPage:
        params = {"status": status, "model": model, "limit": limit, "after": after}
        body = await self._call("GET", "v1/tasks", params={k: v for k, v in params.items() if v})
        return TaskPage(
            tasks=[Task.from_dict(t) for t in body.get("data") or () if isinstance(t, dict)],
            has_more=body.get("has_more") is True,
            next_after=body.get("next_after"),
        )

    async def list(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 20
    ) -> AsyncIterator[Task]:
        """Every task of this key, newest first, page by page: `async for task in ...`."""
        after: str | None = None
        while True:
            page = await self.list_page(status=status, model=model, limit=page_size, after=after)
            for task in page.tasks:
                yield task
            if not page.has_more or not page.next_after:
                return
            after = page.next_after

    async def models(self) -> builtins.list[Model]:
        body = await self._call("GET", "v1/models")
        return [Model.from_dict(m) for m in body.get("data") or () if isinstance(m, dict)]

    # -- waiting ---------------------------------------------------------------------------------

    def events(self, task: Task | str) -> AsyncIterator[Task]:
        """The task's state as the server pushes it: `async for task in client.events(id)`."""
        return self._events(task_id_of(task), None)

    async def _events(self, task_id: str, deadline: float | None) -> AsyncGenerator[Task, None]:
        remaining = None if deadline is None else deadline - time.monotonic()
        url = self._url(f"v1/tasks/{quote(task_id, safe='')}/events")
        headers = self._headers({"Accept": "text/event-stream"})
        async with self._http.stream(
            "GET", url, headers=headers, timeout=event_timeout(remaining)
        ) as response:
            if response.is_error or not is_event_stream(response):
                await response.aread()
                decode(response)
                raise NoEventStream(f"GET {url} did not answer with an event stream")
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                task = event_task(event) if event is not None else None
                if task is not None:
                    yield task
                    if task.finished:
                        return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = 600.0,  # noqa: ASYNC109 (the same surface as Client)
        on_update: UpdateCallback | None = None,
        use_events: bool = True,
        poll_interval: float = 0.5,
        max_poll_interval: float = 5.0,
        raise_on_failure: bool = True,
    ) -> Task:
        """Until the task finishes (see `Client.wait`)."""
        task_id = task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        updates = Updates(on_update)
        done = None
        if use_events:
            done = await self._wait_events(task_id, deadline, timeout, updates)
        if done is None:
            delay = PollDelay(poll_interval, max(poll_interval, max_poll_interval))
            while True:
                current = await self.get(task_id)
                await _notify(updates, current)
                if current.finished:
                    done = current
                    break
                left = time_left(task_id, deadline, timeout, updates)
                await asyncio.sleep(min(delay.next(), left))
        return final(done, raise_on_failure)

    async def _wait_events(
        self, task_id: str, deadline: float | None, limit: float | None, updates: Updates
    ) -> Task | None:
        failures = 0
        while failures < EVENT_RECONNECTS:
            try:
                stream = self._events(task_id, deadline)
                try:
                    async for current in stream:
                        await _notify(updates, current)
                        if current.finished:
                            return current
                finally:
                    await stream.aclose()
                failures += 1
            except (AuthenticationError, PermissionDeniedError):
                raise
            except (APIError, NoEventStream):
                return None
            except (httpx.TransportError, APIConnectionError):
                failures += 1
            left = time_left(task_id, deadline, limit, updates)
            await asyncio.sleep(min(0.25 * failures, left))
        return None

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = 600.0,  # noqa: ASYNC109 (the same surface as Client)
        on_update: UpdateCallback | None = None,
        **params: Any,
    ) -> Task:
        """`submit` then `wait`: the completed task."""
        task_id = await self.submit(model, prompt, **params)
        return await self.wait(task_id, timeout=timeout, on_update=on_update)

    # -- files -----------------------------------------------------------------------------------

    async def download(
        self,
        source: Task | Video | str,
        path: str | os.PathLike[str],
        *,
        index: int = 0,
    ) -> Path:
        """Save a result video to `path`, streamed (see `Client.download`)."""
        url = video_url(source, index, self.base_url)
        target = Path(path)
        part = target.with_name(f".{target.name}.part")
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(part.open, "wb")
        try:
            async with self._http.stream(
                "GET", url, headers={"User-Agent": USER_AGENT}, follow_redirects=True
            ) as response:
                if response.is_error:
                    await response.aread()
                    decode(response)
                async for chunk in response.aiter_bytes(1 << 16):
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, part, target)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"GET {url}: {describe(exc)}") from exc
        finally:
            out.close()
            await asyncio.to_thread(part.unlink, missing_ok=True)
        return target

    async def download_all(self, task: Task, path: str | os.PathLike[str]) -> builtins.list[Path]:
        """Save every sample (out.mp4, out-1.mp4, ...; see `Client.download_all`)."""
        video_url(task, 0, self.base_url)
        paths = sample_paths(path, len(task.videos))
        return [await self.download(task, p, index=i) for i, p in enumerate(paths)]


async def _notify(updates: Updates, task: Task) -> None:
    result = updates.seen(task)
    if inspect.isawaitable(result):
        await result
