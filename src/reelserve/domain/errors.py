"""Errors raised by the domain and service layers, and what each HTTP status means on the wire.

`TYPE_BY_STATUS` is the one table of the envelope's `type` by status (CONTRACT.md): an error
class names only its status, and its `type` is read from the table; the API's handlers, the body
limit middleware, the status fast path and the OpenAI facade all go through it (`domain/wire.py`
writes the envelope).
"""

from __future__ import annotations

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "payment_required",
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
    """The envelope's `type` for an HTTP status: any other 4xx is the client's, 5xx the server's."""
    return TYPE_BY_STATUS.get(status) or (
        "invalid_request_error" if 400 <= status < 500 else "server_error"
    )


class ReelserveError(Exception):
    """Base class: an error with an HTTP status and an optional field name; its envelope `type`
    follows from the status (`error_type`)."""

    status: int = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def type(self) -> str:
        return error_type(self.status)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the envelope (a 429's `Retry-After`)."""
        return {}


class InvalidRequest(ReelserveError):
    """The request itself is wrong: names the field, what was expected and what came."""

    status = 400


class NotFound(ReelserveError):
    status = 404


class Conflict(ReelserveError):
    status = 409


class Gone(ReelserveError):
    status = 410


class PayloadTooLarge(ReelserveError):
    """A request body over `max_body_bytes` (answered by `api.middleware.BodyLimitMiddleware`)."""

    status = 413


class AuthenticationFailed(ReelserveError):
    status = 401


class PaymentRequired(ReelserveError):
    """The key's budget cannot cover the request's estimated cost (the ledger, store/ledger.py)."""

    status = 402


class PermissionDenied(ReelserveError):
    status = 403


class RateLimited(ReelserveError):
    """Too many requests: `retry_after` is the whole seconds until one would be accepted."""

    status = 429

    def __init__(self, message: str, *, param: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, param=param)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(ReelserveError):
    status = 503


def clip(text: str, limit: int = 64) -> str:
    """Client text shown in a message, at most `limit` characters (an id that is not found)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: object) -> str:
    """A short, client-safe description of a JSON value for error messages: type and value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'string "{shown}"'
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
