"""The bytes of reelserve's JSON answers: one encoder that cannot raise, and the envelope.

Every JSON answer is `{"code": 200, "data": ...}` or `{"code": N, "error": {"message", "type",
"param"}}` (CONTRACT.md), compact UTF-8, members in that order. This module is the one place
those bytes are made. It lives in `domain/` (pure, no I/O) rather than in `api/` because two
layers need the same bytes and only one of them may import the API: `api/envelope.py` wraps them
in responses for the routes, the exception handlers, the body limit middleware and the status
fast path, and the worker's webhook bodies (exactly what `GET /v1/tasks/{id}` answers) are made
here too, and the worker must not import `reelserve.api`.
"""

from __future__ import annotations

import json

from reelserve.domain.errors import ReelserveError, error_type


def dumps(value: object) -> bytes:
    """Compact UTF-8 JSON. Text that cannot be UTF-8 (a lone surrogate stored before client text
    was checked) becomes "?" rather than an exception that would turn the answer into a 500."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "replace")


def envelope(data: object, **extra: object) -> bytes:
    """A success: `{"code": 200, "data": data, ...extra}` (a listing adds `has_more`, ...)."""
    return dumps({"code": 200, "data": data, **extra})


def error_envelope(
    status: int, message: str, *, type_: str | None = None, param: str | None = None
) -> bytes:
    """An error: `{"code": status, "error": {"message", "type", "param"}}`; `type_` defaults to
    the status's (`domain.errors.error_type`)."""
    error = {"message": message, "type": type_ or error_type(status), "param": param}
    return dumps({"code": status, "error": error})


def error_of(exc: ReelserveError) -> bytes:
    """The envelope of a domain error."""
    return error_envelope(exc.status, exc.message, type_=exc.type, param=exc.param)
