"""The error envelope on every non-2xx answer, `{"code": N, "error": {message, type, param}}`:
the exception handlers that turn every error into one, and how the OpenAPI document shows it.

The bytes are made by `domain/wire.py` and answered by `api/envelope.py`; the `type` of each
status is `domain.errors.TYPE_BY_STATUS`.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelserve.api import envelope
from reelserve.domain.errors import ReelserveError

log = logging.getLogger("reelserve.api")

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "payment_required",
    "permission_error",
    "rate_limit_error",
    "upstream_error",
    "server_error",
]


class ErrorDetail(BaseModel):
    message: str = Field(description="names the field, what was expected and what came")
    type: ErrorType
    param: str | None = Field(description="the offending field, where there is one")


class ErrorEnvelope(BaseModel):
    """The body of every non-2xx answer (`domain.wire` writes it; the OpenAPI document shows it)."""

    code: int = Field(description="the HTTP status")
    error: ErrorDetail


# What each status means on this API, for the OpenAPI document.
ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field, parameter or body that breaks the contract (never 422)",
    401: "Missing, malformed, unknown or revoked API key",
    402: "Payment required: the request's estimated cost is more than the key's budget has "
    "left (budget less what is reserved and spent); the message gives both",
    403: "Not permitted: the file link is not valid, the key may not use this model, or the "
    "route is not this kind of key's (an admin key has no tasks; only an admin key uses "
    "/v1/admin/*)",
    404: "No such task, video or file for this key",
    405: "Method not allowed on this path",
    409: "The task is in a state that does not allow this (not finished, already finished, "
    "or the Idempotency-Key was used with another request)",
    410: "The files are no longer available (expired or deleted)",
    413: "The request body is larger than the server's limit",
    416: "The Range is outside the file",
    429: "The key's submits per minute are used up; Retry-After gives the seconds until one "
    "more is accepted",
    503: "Not ready: the database or the storage cannot be reached",
}


# `Idempotency-Key` as the service checks it (1 to 255 characters, a 400 naming the header).
IDEMPOTENCY_KEY_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": 255}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that can answer `statuses` (and 400: every route checks its
    path and query text), each with the envelope's schema."""
    return {
        status: {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS[status]}
        for status in sorted({400, *statuses})
    }


def install(app: FastAPI) -> None:
    @app.exception_handler(ReelserveError)
    async def _domain(_: Request, exc: ReelserveError) -> Response:
        return envelope.of_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers or {})
        route = request.scope.get("route")
        if exc.status_code == 405 and request.method not in getattr(route, "methods", ()):
            # The router's own 405 (not one an endpoint raised): name every method of the path.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return envelope.error(exc.status_code, message, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ("query", "path", "body", "header", "cookie")
        loc = [str(p) for p in first.get("loc", ()) if p not in where]
        param = ".".join(loc) or None
        given = first.get("input")
        message = f"{param or 'request'}: {first.get('msg', 'invalid value')}"
        if isinstance(given, str | int | float):
            message += f" (got {given!r})"
        return envelope.error(400, message, param=param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return envelope.error(500, "internal server error; the server log has the details")


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this path (Starlette's own 405 names only the
    first route whose path matched, so `OPTIONS /v1/videos` said `Allow: POST`, not `GET,
    POST`)."""
    path = request.scope["path"]
    paths: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    if path in paths:  # a literal route wins over templates, as in routing
        return sorted(method.upper() for method in paths[path])
    methods: set[str] = set()
    for template, operations in paths.items():
        if _template(template).fullmatch(path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


@functools.lru_cache(maxsize=256)
def _template(path: str) -> re.Pattern[str]:
    """`/v1/tasks/{task_id}` as a regular expression (a parameter is one path segment)."""
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)))
