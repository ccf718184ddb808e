"""`AsyncClient`: the asyncio SDK, the same surface as `Client`, awaited. Only its I/O is here
(sending, sleeping, streaming to a file, with file work in threads); what to send, how to read
the answer and when to try again come from `BaseClient`."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar, Unpack

import httpx

from reelserve.client._base import (
    BaseClient,
    Call,
    connection_error,
    decode,
    next_after,
    refuse_stream,
)
from reelserve.client._events import EventReader, is_event_stream
from reelserve.client._submission import SubmitFields
from reelserve.client._wait import UpdateCallback, Waiter
from reelserve.client.errors import ReelserveError
from reelserve.client.types import Model, Task, TaskPage, Video

T = TypeVar("T")


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """A reelserve server, from asyncio code.

        async with AsyncClient() as client:
            task_id = await client.submit("sandbox", "a red kite over the sea", duration=2)
            task = await client.wait(task_id, on_update=lambda t: print(t.progress))
            await client.download(task, "kite.mp4")

    The arguments are `Client`'s (`http_client`: your own `httpx.AsyncClient`). `on_update` may
    be a plain function or a coroutine function. Retries as `Client` does."""

    def _new_http(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.request)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._delay_after_error(call, attempt, exc))
            else:
                delay = self._delay_after(call, attempt, response)
                if delay is None:
                    return call.result(response)
                await asyncio.sleep(delay)
            attempt += 1

    # -- tasks -----------------------------------------------------------------------------------

    async def submit(self, model: str, prompt: str, **fields: Unpack[SubmitFields]) -> str:
        """Queue a generation; returns the task id (see `Client.submit`). Local image files
        are read in a thread."""
        call = await asyncio.to_thread(self._submit_call, model, prompt, fields)
        return await self._send(call)

    async def get(self, task: Task | str) -> Task:
        return await self._send(self._get_call(task))

    async def cancel(self, task: Task | str) -> Task:
        return await self._send(self._cancel_call(task))

    async def list_page(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> TaskPage:
        return await self._send(self._list_page_call(status, model, limit, after))

    async def list(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 20
    ) -> AsyncIterator[Task]:
        """Every task of this key, newest first, page by page: `async for task in ...`."""
        after: str | None = None
        while True:
            page = await self.list_page(status=status, model=model, limit=page_size, after=after)
            for task in page.tasks:
                yield task
            after = next_after(page)
            if after is None:
                return

    async def models(self) -> builtins.list[Model]:
        return await self._send(self._models_call())

    # -- waiting ---------------------------------------------------------------------------------

    def events(self, task: Task | str) -> AsyncIterator[Task]:
        """The task's state as the server pushes it: `async for task in client.events(id)`."""
        return self._events(task, None)

    async def _events(self, task: Task | str, deadline: float | None) -> AsyncGenerator[Task, None]:
        request = self._events_request(task, deadline)
        async with aclosing(await self._http.send(request, stream=True)) as response:
            if not is_event_stream(response):
                await response.aread()
                refuse_stream(response)
            reader = EventReader(deadline)
            async for line in response.aiter_lines():
                current = reader.feed(line)
                if current is not None:
                    yield current
                if reader.done:
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
        waiter = Waiter(
            task, timeout, on_update, poll_interval, max_poll_interval, raise_on_failure
        )
        if use_events:
            await self._follow(waiter)
        while waiter.done is None:
            await _notify(waiter.seen(await self.get(waiter.task_id)))
            if waiter.done is None:
                await asyncio.sleep(waiter.poll_delay())
        return waiter.result()

    async def _follow(self, waiter: Waiter) -> None:
        while True:
            try:
                async with aclosing(self._events(waiter.task_id, waiter.deadline)) as stream:
                    async for current in stream:
                        await _notify(waiter.seen(current))
                delay = waiter.reconnect_delay()
            except (httpx.TransportError, ReelserveError) as exc:
                delay = waiter.reconnect_delay(exc)
            if delay is None:
                return
            await asyncio.sleep(delay)

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
        plan = self._plan_download(source, path, index)
        await asyncio.to_thread(plan.target.parent.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(plan.part.open, "wb")
        try:
            response = await self._http.send(plan.request, stream=True, follow_redirects=True)
            async with aclosing(response):
                if response.is_error:
                    await response.aread()
                    decode(response)
                async for chunk in response.aiter_bytes(1 << 16):
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, plan.part, plan.target)
        except httpx.TransportError as exc:
            raise connection_error(plan.request, exc) from exc
        finally:
            out.close()
            await asyncio.to_thread(plan.part.unlink, missing_ok=True)
        return plan.target

    async def download_all(self, task: Task, path: str | os.PathLike[str]) -> builtins.list[Path]:
        """Save every sample (out.mp4, out-1.mp4, ...; see `Client.download_all`)."""
        paths = self._sample_paths(task, path)
        return [await self.download(task, p, index=i) for i, p in enumerate(paths)]


async def _notify(result: Any) -> None:
    """Await what `on_update` returned, when it was a coroutine function."""
    if inspect.isawaitable(result):
        await result
