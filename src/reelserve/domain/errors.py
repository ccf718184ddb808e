"""Errors raised by the domain and service layers; the API maps them onto the error envelope."""

from __future__ import annotations


class ReelserveError(Exception):
    """Base class: an error with an HTTP status, an envelope type and an optional field name."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ReelserveError):
    """The request itself is wrong: names the field, what was expected and what came."""

    status = 400
    type = "invalid_request_error"


class NotFound(ReelserveError):
    status = 404
    type = "invalid_request_error"


class Conflict(ReelserveError):
    status = 409
    type = "invalid_request_error"


class Gone(ReelserveError):
    status = 410
    type = "invalid_request_error"


class PayloadTooLarge(ReelserveError):
    status = 413
    type = "invalid_request_error"


class AuthenticationFailed(ReelserveError):
    status = 401
    type = "authentication_error"


class PermissionDenied(ReelserveError):
    status = 403
    type = "permission_error"


class ServiceUnavailable(ReelserveError):
    status = 503
    type = "upstream_error"


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
