"""`Client`: the synchronous SDK. Only its I/O is here (sending, sleeping, streaming to a file);
what to send, how to read the answer and when to try again come from `BaseClient`."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator
from contextlib import closing
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


class Client(BaseClient[httpx.Client]):
    """A reelserve server, synchronously.

        client = Client()  # REELSERVE_URL (default http://127.0.0.1:8000) and REELSERVE_KEY
        task = client.generate("sandbox", "a red kite over the sea", duration=2)
        client.download(task, "kite.mp4")

    `Client(base_url=None, api_key=None, *, timeout=60, max_retries=2, http_client=None)`:
    `http_client` is your own `httpx.Client` (proxies, TLS). Requests that fail on the way
    (connection errors, 429, 502-504) are retried up to `max_retries` times with backoff,
    honouring `Retry-After`; a submit is retried safely because it always carries an
    `Idempotency-Key`."""

    def _new_http(self, timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request)
            except httpx.TransportError as exc:
                time.sleep(self._delay_after_error(call, attempt, exc))
            else:
                delay = self._delay_after(call, attempt, response)
                if delay is None:
                    return call.result(response)
                time.sleep(delay)
            attempt += 1

    # -- tasks -----------------------------------------------------------------------------------

    def submit(self, model: str, prompt: str, **fields: Unpack[SubmitFields]) -> str:
        """Queue a generation; returns the task id. Fields left out get the server's defaults
        (`duration`, `aspect_ratio`, `resolution`, `first_frame_image`, `last_frame_image`,
        `seed`, `sample_count`, `generate_audio`, `negative_prompt`, `person_generation`,
        `resize_mode`, `enhance_prompt`, `webhook_url`). Images: an http(s) URL (fetched by the
        server), a data URL, or a local file (`pathlib.Path`) or bytes, sent as a data URL.
        `extra`: further JSON fields. `idempotency_key`: a retried submit with the same key
        (and body) returns the first task instead of queueing another (24 hours, per API
        key)."""
        return self._send(self._submit_call(model, prompt, fields))

    def get(self, task: Task | str) -> Task:
        """The task's current state."""
        return self._send(self._get_call(task))

    def cancel(self, task: Task | str) -> Task:
        """Cancel a task: a pending one at once, a processing one as soon as its provider
        allows. A finished task raises `ConflictError`."""
        return self._send(self._cancel_call(task))

    def list_page(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> TaskPage:
        """One page of this key's tasks, newest first."""
        return self._send(self._list_page_call(status, model, limit, after))

    def list(
        self, *, status: str | None = None, model: str | None = None, page_size: int = 20
    ) -> Iterator[Task]:
        """Every task of this key (optionally of one status or model), newest first, fetched
        page by page as the iteration goes."""
        after: str | None = None
        while True:
            page = self.list_page(status=status, model=model, limit=page_size, after=after)
            yield from page.tasks
            after = next_after(page)
            if after is None:
                return

    def models(self) -> builtins.list[Model]:
        """The server's models and what each can do."""
        return self._send(self._models_call())

    # -- waiting ---------------------------------------------------------------------------------

    def events(self, task: Task | str) -> Iterator[Task]:
        """The task's state as the server pushes it (`GET /v1/tasks/{id}/events`): the current
        state first, then each status or progress change; ends after the final state."""
        return self._events(task, None)

    def _events(self, task: Task | str, deadline: float | None) -> Iterator[Task]:
        request = self._events_request(task, deadline)
        with closing(self._http.send(request, stream=True)) as response:
            if not is_event_stream(response):
                response.read()
                refuse_stream(response)
            reader = EventReader(deadline)
            for line in response.iter_lines():
                current = reader.feed(line)
                if current is not None:
                    yield current
                if reader.done:
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
        waiter = Waiter(
            task, timeout, on_update, poll_interval, max_poll_interval, raise_on_failure
        )
        if use_events:
            self._follow(waiter)
        while waiter.done is None:
            waiter.seen(self.get(waiter.task_id))
            if waiter.done is None:
                time.sleep(waiter.poll_delay())
        return waiter.result()

    def _follow(self, waiter: Waiter) -> None:
        """Follow the event stream until the task finishes or the waiter gives the stream up."""
        while True:
            try:
                for current in self._events(waiter.task_id, waiter.deadline):
                    waiter.seen(current)
                delay = waiter.reconnect_delay()
            except (httpx.TransportError, ReelserveError) as exc:
                delay = waiter.reconnect_delay(exc)
            if delay is None:
                return
            time.sleep(delay)

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
        plan = self._plan_download(source, path, index)
        plan.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = self._http.send(plan.request, stream=True, follow_redirects=True)
            with closing(response), plan.part.open("wb") as out:
                if response.is_error:
                    response.read()
                    decode(response)
                for chunk in response.iter_bytes(1 << 16):
                    out.write(chunk)
            os.replace(plan.part, plan.target)
        except httpx.TransportError as exc:
            raise connection_error(plan.request, exc) from exc
        finally:
            plan.part.unlink(missing_ok=True)
        return plan.target

    def download_all(self, task: Task, path: str | os.PathLike[str]) -> builtins.list[Path]:
        """Save every sample of a completed task: the first at `path`, the next ones beside it
        as `stem-1.ext`, `stem-2.ext`... (out.mp4, out-1.mp4, ...). Returns the paths."""
        paths = self._sample_paths(task, path)
        return [self.download(task, p, index=i) for i, p in enumerate(paths)]
