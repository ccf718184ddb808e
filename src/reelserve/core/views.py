"""The contract's JSON for a task, its result, a usage report and a webhook delivery.

Pure functions of typed values (`domain.result`, the store's rows): no I/O, no settings. A view
never builds a URL: it is handed `links`, which turns a stored file (storage key, content type,
expiry) into the URL a client fetches it from, so the views know the wire format and nothing of
routes, signing or the request's host (`core.files.file_links` makes the signed `/v1/files/`
links). API answers, event streams and webhook bodies all render through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from reelserve.domain.result import TaskResult, TaskView
from reelserve.domain.task import ErrorCode, TaskStatus
from reelserve.store.usage import ModelUsage
from reelserve.store.webhooks import Attempt, Delivery

# (storage key, content type, expires_at in Unix seconds) -> the URL the file is fetched from.
Links = Callable[[str, str, int], str]


def task_json(task: TaskView, links: Links) -> dict[str, Any]:
    """`GET /v1/tasks/{id}`'s `data`. A pending task shows the `queue_position` it was read
    with."""
    view: dict[str, Any] = {
        "id": task.id,
        "status": task.status.value,
        "progress": task.progress,
        "model": task.model,
        "route": task.provider,
        "created": int(task.created_at),
        "estimated_time": task.estimated_time,
    }
    if task.status is TaskStatus.PENDING:
        view["queue_position"] = task.queue_position
    if task.status.finished and task.finished_at is not None:
        view["completed"] = int(task.finished_at)
        view["actual_time"] = max(0, math.ceil(task.finished_at - task.created_at))
    if task.status is TaskStatus.COMPLETED and task.result is not None:
        view["result"] = result_json(task.result, links, expired=task.files_expired_at is not None)
    if task.status is TaskStatus.FAILED:
        view["error"] = error_json(task.error_code, task.error_message)
    return view


def result_json(result: TaskResult, links: Links, *, expired: bool = False) -> dict[str, Any]:
    """A completed task's `result`: one entry per delivered sample, links included; `withheld`
    when the upstream delivered fewer; `expired` once the retention sweeper deleted the files."""
    expires_at = result.expires_at
    videos = [
        {
            "url": [links(video.video_key, "video/mp4", expires_at)],
            "expires_at": expires_at,
            "thumbnail_url": links(video.thumbnail_key, "image/jpeg", expires_at),
            "duration": video.duration,
            "width": video.width,
            "height": video.height,
            "fps": video.fps,
            "has_audio": video.has_audio,
            "seed": video.seed,
            "person_generation": video.person_generation,
            "size_bytes": video.size_bytes,
            "content_type": "video/mp4",
        }
        for video in result.videos
    ]
    view: dict[str, Any] = {"videos": videos}
    if result.withheld:
        view["withheld"] = [w.to_json() for w in result.withheld]
    if expired:
        view["expired"] = True
    return view


# A failed task's `error.type` by its `error.code`, in the error envelope's vocabulary
# (CONTRACT.md), as the hosted API's task-status docs give `code`, `message` and `type`: the
# request's own fault, the upstream's (a provider, remote or local, that failed or took too
# long, as a 502 or 504 would be), or this server's.
ERROR_TYPES: dict[str, str] = {
    ErrorCode.CONTENT_FILTERED: "invalid_request_error",  # the prompt or an image was refused
    ErrorCode.INVALID_IMAGE: "invalid_request_error",  # an image could not be fetched or read
    ErrorCode.UPSTREAM_ERROR: "upstream_error",
    ErrorCode.TIMEOUT: "upstream_error",
    ErrorCode.OUT_OF_MEMORY: "server_error",  # this server's GPU
    ErrorCode.PROVIDER_NOT_CONFIGURED: "server_error",  # the operator's configuration
    ErrorCode.INTERNAL_ERROR: "server_error",
}


def error_type(code: str) -> str:
    """The `type` of a task error code; a code this table does not know is the server's."""
    return ERROR_TYPES.get(code, "server_error")


def error_json(code: str | None, message: str | None) -> dict[str, Any]:
    """A failed task's `error`: `code`, `message` and `type`."""
    code = code or ErrorCode.INTERNAL_ERROR.value
    return {"code": code, "message": message or "", "type": error_type(code)}


def usage_json(
    rows: Sequence[ModelUsage], *, since: float | None, until: float | None
) -> dict[str, Any]:
    """`GET /v1/usage`'s `data`: the rows per model (and currency), and their totals per
    currency."""
    return {
        "object": "usage",
        "since": since,
        "until": until,
        "models": [
            {
                "model": row.model,
                "tasks": row.tasks,
                "videos": row.videos,
                "video_seconds": row.video_seconds,
                "cost": row.cost,
                "currency": row.currency,
            }
            for row in rows
        ],
        "totals": currency_totals(rows),
    }


class UsageRow(Protocol):
    """What a usage row of any grouping (per model, per day) has to be totalled."""

    @property
    def currency(self) -> str: ...
    @property
    def tasks(self) -> int: ...
    @property
    def videos(self) -> int: ...
    @property
    def video_seconds(self) -> float: ...
    @property
    def cost(self) -> float: ...


def currency_totals(rows: Iterable[UsageRow]) -> list[dict[str, Any]]:
    """The rows' tasks, videos, seconds of video and cost summed per currency."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(
            row.currency,
            {"currency": row.currency, "tasks": 0, "videos": 0, "video_seconds": 0.0, "cost": 0.0},
        )
        total["tasks"] += row.tasks
        total["videos"] += row.videos
        total["video_seconds"] = round(total["video_seconds"] + row.video_seconds, 3)
        total["cost"] = round(total["cost"] + row.cost, 6)
    return list(totals.values())


def delivery_json(delivery: Delivery, attempts: Sequence[Attempt]) -> dict[str, Any]:
    """One entry of `GET /v1/tasks/{id}/webhooks`: a delivery and every attempt made."""
    return {
        "id": delivery.id,
        "url": delivery.url,
        "event": delivery.event,
        "status": delivery.state.value,
        "created": int(delivery.created_at),
        "next_attempt_at": _rounded(delivery.next_attempt_at),
        "finished": _rounded(delivery.finished_at),
        "attempts": [
            {
                "attempt": x.attempt,
                "at": round(x.started_at, 3),
                "duration_ms": round(x.duration * 1000),
                "status_code": x.status_code,
                "error": x.error,
                "outcome": x.outcome.value,
            }
            for x in attempts
        ],
    }


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None
