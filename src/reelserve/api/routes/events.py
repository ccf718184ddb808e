"""GET /v1/tasks/{task_id}/events: a task's status and progress as Server-Sent Events.

The watching is `reelserve.api.watch`'s job; this module only speaks the `text/event-stream` format:
one event per change (`id:` a sequence number within the stream, `event:` "status" or
"progress", `data:` the task view of `GET /v1/tasks/{id}` as one line of JSON), a comment line
after `events_keepalive` seconds of silence, and the end of the response after the final state.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from reelserve.api.auth import Key, Service
from reelserve.api.errors import error_responses
from reelserve.api.watch import TaskEvent, TaskEvents, TaskWatcher
from reelserve.domain import wire

router = APIRouter(tags=["tasks"])

KEEPALIVE = b": keep-alive\n\n"


def format_event(seq: int, event: TaskEvent) -> bytes:
    data = wire.dumps(event.view)
    return f"id: {seq}\nevent: {event.name}\ndata: ".encode() + data + b"\n\n"


class EventStreamResponse(Response):
    """Streams a `TaskEvents` and stops as soon as the client disconnects (whatever the ASGI
    server's version), so a closed connection never leaves a stream registered."""

    media_type = "text/event-stream"

    def __init__(self, events: TaskEvents, *, keepalive: float) -> None:
        # Not Response.__init__: a body-less Response would announce Content-Length: 0.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.keepalive = keepalive
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.create_task(self._stream(send))
        gone = asyncio.create_task(_disconnected(receive))
        stopping = False
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The ASGI server cancels requests still running when its graceful-shutdown time is
            # up (`reelserve serve` waits 10 s): end the stream properly, so that clients
            # reconnect (to another API process, say) instead of seeing a broken response.
            stopping = True
        finally:
            for task in (stream, gone):
                task.cancel()
            for task in (stream, gone):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            self.events.close()
        if stopping:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self._started:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self._started = True
        seq = 0
        async with self.events:
            while not self.events.done:
                event = await self.events.next(self.keepalive)
                if event is not None:
                    seq += 1
                    chunk = format_event(seq, event)
                elif not self.events.done:
                    chunk = KEEPALIVE
                else:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/v1/tasks/{task_id}/events",
    summary="Stream a task's status and progress (Server-Sent Events)",
    response_class=Response,
    responses={
        200: {
            "description": "`text/event-stream`: `status` and `progress` events whose data is "
            "the task view of GET /v1/tasks/{task_id}; keep-alive comments; ends after the "
            "final state",
            "content": {"text/event-stream": {}},
        },
        **error_responses(401, 403, 404),
    },
)
async def task_events(task_id: str, request: Request, key: Key, service: Service) -> Response:
    watcher: TaskWatcher = request.app.state.task_watcher
    events = await watcher.open(key, task_id, str(request.base_url))
    return EventStreamResponse(events, keepalive=service.settings.events_keepalive)
