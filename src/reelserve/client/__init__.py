"""The reelserve Python SDK: `Client` (sync) and `AsyncClient` (asyncio), over httpx.

    from reelserve.client import Client

    with Client() as client:  # REELSERVE_URL (default http://127.0.0.1:8000), REELSERVE_KEY
        task_id = client.submit("sandbox", "a paper boat on a pond", duration=2)
        task = client.wait(task_id, on_update=lambda t: print(t.status, t.progress))
        client.download(task, "boat.mp4")

It depends on httpx alone and imports nothing of the server. See docs/client.md.
"""

from reelserve.client._async import AsyncClient
from reelserve.client._common import image_data_url, sample_paths
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
