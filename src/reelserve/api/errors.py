"""The error envelope on every non-2xx answer: `{"code": N, "error": {message, type, param}}`."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "upstream_error",
    504: "upstream_error",
}


def envelope(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, object] = {
        "message": message,
        "type": type_ or TYPE_BY_STATUS.get(status, "server_error"),
    }
    error["param"] = param
    return JSONResponse({"code": status, "error": error}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ReelserveError)
    async def _domain(_: Request, exc: ReelserveError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return envelope(exc.status, exc.message, type_=exc.type, param=exc.param, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return envelope(exc.status_code, message, headers=dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        param = ".".join(loc) or None
        given = first.get("input")
        message = f"{param or 'request'}: {first.get('msg', 'invalid value')}"
        if isinstance(given, str | int | float):
            message += f" (got {given!r})"
        return envelope(400, message, param=param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return envelope(500, "internal server error; the server log has the details")


def ok(data: object, **extra: object) -> Response:
    """A success envelope, serialised directly (no generic encoder pass: the views are plain
    JSON types already)."""
    body = {"code": 200, "data": data, **extra}
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        media_type="application/json",
    )
