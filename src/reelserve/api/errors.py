"""The error envelope on every non-2xx answer: `{"code": N, "error": {message, type, param}}`."""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelserve.domain.errors import ReelserveError

log = logging.getLogger("reelserve.api")

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    416: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "upstream_error",
    504: "upstream_error",
}


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
    """The body of every non-2xx answer (`envelope` writes it; the OpenAPI document shows it)."""

    code: int = Field(description="the HTTP status")
    error: ErrorDetail


# What each status means on this API, for the OpenAPI document.
ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field, parameter or body that breaks the contract (never 422)",
    401: "Missing, malformed, unknown or revoked API key",
    403: "The file link is not valid",
    404: "No such task, video or file for this key",
    405: "Method not allowed on this path",
    409: "The task is in a state that does not allow this (not finished, already finished, "
    "or the Idempotency-Key was used with another request)",
    410: "The files are no longer available (expired or deleted)",
    413: "The request body is larger than the server's limit",
    416: "The Range is outside the file",
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


def error_type(status: int) -> str:
    """The envelope's `type` for an HTTP status (CONTRACT.md): any other 4xx is the client's."""
    return TYPE_BY_STATUS.get(status) or (
        "invalid_request_error" if 400 <= status < 500 else "server_error"
    )


def json_bytes(body: object) -> bytes:
    """Compact UTF-8 JSON of an answer. Text that cannot be UTF-8 (a lone surrogate stored before
    client text was checked) becomes "?" rather than an exception that would turn the answer
    into a 500."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "replace")


def envelope(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, object] = {"message": message, "type": type_ or error_type(status)}
    error["param"] = param
    return Response(
        json_bytes({"code": status, "error": error}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ReelserveError)
    async def _domain(_: Request, exc: ReelserveError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return envelope(exc.status, exc.message, type_=exc.type, param=exc.param, headers=headers)

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
        return envelope(exc.status_code, message, headers=headers or None)

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
        return envelope(400, message, param=param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return envelope(500, "internal server error; the server log has the details")


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


def ok(data: object, **extra: object) -> Response:
    """A success envelope, serialised directly (no generic encoder pass: the views are plain
    JSON types already)."""
    return Response(json_bytes({"code": 200, "data": data, **extra}), media_type="application/json")
