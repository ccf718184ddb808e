"""The SDK's exceptions.

Every error answer of a reelserve server carries the same envelope,
`{"code": 404, "error": {"message": ..., "type": ..., "param": ...}}`; `APIError` and its
subclasses carry its parts. The subclass follows the envelope's `type` (and, within
`invalid_request_error`, the status), so `except InvalidRequestError` catches every "the request
was wrong" answer, `NotFoundError` included.

    ReelserveError
    ├── APIError                     an error answer (status_code, type, message, param)
    │   ├── InvalidRequestError      400 / 404 / 409 / 410 / 413 ...: fix the request
    │   │   ├── NotFoundError        404: no such task (or another key's)
    │   │   └── ConflictError        409: e.g. cancelling a finished task
    │   ├── AuthenticationError      401: missing, unknown or revoked key
    │   ├── PermissionDeniedError    403
    │   ├── RateLimitError           429, with `retry_after` seconds
    │   ├── UpstreamError            502 / 503 / 504
    │   └── ServerError              500 and anything else
    ├── APIConnectionError           the server could not be reached, or answered nonsense
    ├── TaskFailed                   `wait` saw the task fail (its error `code` and `message`)
    ├── TaskCancelled                `wait` saw the task cancelled
    └── WaitTimeout                  `wait` gave up (also a `TimeoutError`)
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reelserve.client.types import Task


class ReelserveError(Exception):
    """Base class of every exception the SDK raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(ReelserveError):
    """The server answered with an error envelope (or at least an error status)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str,
        param: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.param = param
        self.body = body
        self.headers = headers or {}

    @property
    def code(self) -> int:
        """The envelope's `code` (equal to the HTTP status)."""
        return self.status_code

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"[{self.status_code} {self.type}] {self.message}{where}"


class InvalidRequestError(APIError):
    pass


class NotFoundError(InvalidRequestError):
    pass


class ConflictError(InvalidRequestError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class RateLimitError(APIError):
    """429. `retry_after`: seconds the server asked to wait (its `Retry-After`), if it said."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


class UpstreamError(APIError):
    pass


class ServerError(APIError):
    pass


class APIConnectionError(ReelserveError):
    """No usable answer: connection refused or reset, a timeout, or a body that is not JSON."""


class TaskFailed(ReelserveError):
    """The task ended `failed`; `code` is its stable error code (`invalid_image`,
    `content_filtered`, `upstream_error`, `timeout`, ...)."""

    def __init__(self, task: Task) -> None:
        error = task.error
        self.task = task
        self.code = error.code if error else "internal_error"
        super().__init__(error.message if error else "the task failed")

    def __str__(self) -> str:
        return f"task {self.task.id} failed: {self.code}: {self.message}"


class TaskCancelled(ReelserveError):
    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"task {task.id} was cancelled")


class WaitTimeout(ReelserveError, TimeoutError):
    """`wait` ran out of time; `task` is the last state seen (None if none was)."""

    def __init__(self, task_id: str, timeout: float, task: Task | None) -> None:
        self.task_id = task_id
        self.task = task
        state = f" (still {task.status}, {task.progress}%)" if task is not None else ""
        super().__init__(f"task {task_id} did not finish within {timeout:g} s{state}")


_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "rate_limit_error": RateLimitError,
    "upstream_error": UpstreamError,
    "server_error": ServerError,
}


def error_for(status: int, body: Any, headers: dict[str, str]) -> APIError:
    """The exception for an error answer: by its envelope's `type` when it has one, else by
    its status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message: str = error["message"]
        type_ = str(error.get("type") or "")
        param = error.get("param") if isinstance(error.get("param"), str) else None
    else:
        message, type_, param = f"HTTP {status} without an error envelope", "", None
    cls = _BY_TYPE.get(type_) or _class_for_status(status)
    if cls is InvalidRequestError:
        cls = {404: NotFoundError, 409: ConflictError}.get(status, InvalidRequestError)
    if not type_:
        type_ = next((t for t, c in _BY_TYPE.items() if issubclass(cls, c)), "server_error")
    return cls(message, status_code=status, type=type_, param=param, body=body, headers=headers)


def _class_for_status(status: int) -> type[APIError]:
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 429:
        return RateLimitError
    if status in (502, 503, 504):
        return UpstreamError
    if 400 <= status < 500:
        return InvalidRequestError
    return ServerError


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
