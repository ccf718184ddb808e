"""The error envelope on every non-2xx answer: `{"code": N, "error": {message, type, param}}`."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
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
        return envelope(exc.status_code, message, headers=dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
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


def ok(data: object, **extra: object) -> Response:
    """A success envelope, serialised directly (no generic encoder pass: the views are plain
    JSON types already)."""
    return Response(json_bytes({"code": 200, "data": data, **extra}), media_type="application/json")
