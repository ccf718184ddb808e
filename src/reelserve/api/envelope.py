"""Answers in the JSON envelope, as responses: every route, the exception handlers, the body limit
middleware and the status fast path answer through here.

The bytes themselves are made by `domain/wire.py` (below both the API and the worker, whose
webhook bodies are the same bytes); this module only puts them on the wire: as a Starlette
`Response` for the framework, or as raw ASGI messages (`send_json`) for the pure ASGI layers in
front of it, which answer before any route exists. Either way `Content-Type: application/json`
and the body bytes are the same.
"""

from __future__ import annotations

from fastapi.responses import Response
from starlette.types import Send

from reelserve.domain import wire
from reelserve.domain.errors import ReelserveError

MEDIA_TYPE = "application/json"
_BEARER = {"WWW-Authenticate": "Bearer"}


def ok(data: object, **extra: object) -> Response:
    """A success envelope, serialised directly (no generic encoder pass: the views are plain
    JSON types already)."""
    return Response(wire.envelope(data, **extra), media_type=MEDIA_TYPE)


def bare(body: object) -> Response:
    """A 200 whose body is `body` itself, outside the envelope (the OpenAI facade's objects)."""
    return Response(wire.dumps(body), media_type=MEDIA_TYPE)


def error(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error envelope; `type_` defaults to the status's."""
    body = wire.error_envelope(status, message, type_=type_, param=param)
    return Response(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def auth_headers(exc: ReelserveError) -> dict[str, str]:
    """The headers of a domain error's answer: a 401 says which scheme to use (RFC 9110
    section 11.6.1); an error's own (a 429's `Retry-After`) come with it."""
    return {**_BEARER, **exc.headers} if exc.status == 401 else exc.headers


def of_error(exc: ReelserveError) -> Response:
    """The answer to a domain error."""
    return Response(
        wire.error_of(exc),
        status_code=exc.status,
        headers=auth_headers(exc) or None,
        media_type=MEDIA_TYPE,
    )


async def send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """Answer `body` (bytes from `domain.wire`) with raw ASGI messages, for the middlewares that
    answer in front of the framework (cheaper than building a `Response` on the hot path)."""
    raw = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
