"""Pure ASGI middlewares (cheaper than BaseHTTPMiddleware on every request): body limit, metrics.

The body limit answers a `PayloadTooLarge` in the one envelope (`domain.wire`, sent by
`api.envelope.send_json`), before any route runs.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelserve.api.envelope import send_json
from reelserve.domain import wire
from reelserve.domain.errors import PayloadTooLarge
from reelserve.metrics import Metrics


class BodyTooLarge(Exception):
    pass


# After deciding to refuse a body, read and discard what the client is still sending (up to
# these bounds) before answering: closing a socket with unread data makes the kernel send a
# reset, which can destroy the 413 answer before the client reads it.
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_SECONDS = 10.0


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _drain(receive, 0)
                    await self._reject(send)
                    return
        seen = 0
        started = False
        body_done = False

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                if not body_done:
                    await _drain(receive, seen)
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        refused = PayloadTooLarge(
            f"request body is larger than the limit of {self.max_bytes} bytes"
        )
        # Close the connection after it: the rest of the body was drained, not parsed.
        await send_json(send, refused.status, wire.error_of(refused), {"connection": "close"})


async def _drain(receive: Receive, seen: int) -> None:
    """Discard the rest of a refused request body, within `DRAIN_MAX_BYTES` / `DRAIN_SECONDS`."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while seen < DRAIN_MAX_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class MetricsMiddleware:
    """Counts requests and observes latency by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.http_requests.labels(scope["method"], path, status).inc()
            self.metrics.http_latency.labels(path).observe(time.perf_counter() - started)
