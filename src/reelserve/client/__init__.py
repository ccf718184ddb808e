"""The reelserve Python SDK, and only that: `Client` (sync) and `AsyncClient` (asyncio) talk to
a reelserve server over HTTP with httpx alone, importing nothing of the server.

    from reelserve.client import Client

    with Client() as client:  # REELSERVE_URL (default http://127.0.0.1:8000), REELSERVE_KEY
        task_id = client.submit("sandbox", "a paper boat on a pond", duration=2)
        task = client.wait(task_id, on_update=lambda t: print(t.status, t.progress))
        client.download(task, "boat.mp4")

As in httpx, everything but I/O (building requests, reading answers, retry and wait decisions)
lives once in `_base`, `_submission`, `_events` and `_wait`; `_sync` and `_async` only send,
sleep and stream. See docs/client.md.
"""

from reelserve.client._async import AsyncClient
from reelserve.client._base import sample_paths
from reelserve.client._submission import image_data_url
from reelserve.client._sync import Client
from reelserve.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ReelserveError,
    ServerError,
    TaskCancelled,
    TaskFailed,
    UpstreamError,
    WaitTimeout,
)
from reelserve.client.types import Model, Task, TaskError, TaskPage, Video, Withheld

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "InvalidRequestError",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReelserveError",
    "ServerError",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskPage",
    "UpstreamError",
    "Video",
    "WaitTimeout",
    "Withheld",
    "image_data_url",
    "sample_paths",
]
