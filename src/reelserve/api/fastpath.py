"""The status poll, served ahead of the framework stack.

`GET /v1/tasks/{task_id}` is what every client calls in a loop, so it is the route whose cost
decides how many clients one API process carries. FastAPI's routing, dependency injection and
middleware layers cost more than the request itself (measured in bench/api.py), so this pure
ASGI middleware answers that one route directly: same authentication, same checks, same service
call, same envelope bytes (`domain.wire`). Everything else (and anything it does not recognise)
goes on to the app, where the documented FastAPI route for the same path also lives.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from reelserve.api.auth import key_from_header
from reelserve.api.envelope import auth_headers, send_json
from reelserve.api.inputs import check_language, check_params
from reelserve.core import Reelserve
from reelserve.domain import wire
from reelserve.domain.errors import ReelserveError
from reelserve.metrics import Metrics

_TASK_PATH = re.compile(r"/v1/tasks/([^/]+)")
ROUTE = "/v1/tasks/{task_id}"


class TaskStatusFastPath:
    def __init__(self, app: ASGIApp, owner: Any, metrics: Metrics) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app, whose lifespan puts the service on its state
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        match = _TASK_PATH.fullmatch(scope["path"])
        service: Reelserve | None = getattr(self.owner.state, "reelserve", None)
        if match is None or service is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, body, headers = await self._answer(scope, service, match.group(1))
        await send_json(send, status, body, headers)
        self.metrics.http_requests.labels("GET", ROUTE, status).inc()
        self.metrics.http_latency.labels(ROUTE).observe(time.perf_counter() - started)

    async def _answer(
        self, scope: Scope, service: Reelserve, task_id: str
    ) -> tuple[int, bytes, dict[str, str]]:
        authorization = host = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"host":
                host = value
        try:
            query = parse_qsl(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            )
            check_params({"task_id": task_id}, query)  # as every route's dependency does
            key = await key_from_header(service, authorization.decode("latin-1") or None)
            languages = [value for name, value in query if name == "language"]
            check_language(languages[-1] if languages else None)
            scheme, root = scope.get("scheme", "http"), scope.get("root_path", "")
            base = f"{scheme}://{host.decode('latin-1')}{root}/"
            view = await service.tasks.status(key, task_id, base)
        except ReelserveError as exc:
            return exc.status, wire.error_of(exc), auth_headers(exc)
        return 200, wire.envelope(view), {}
