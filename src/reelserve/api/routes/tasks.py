"""Task status, listing and cancellation."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import error_responses
from reelserve.api.inputs import check_language
from reelserve.api.routes.schemas import TaskAnswer, TaskPage, TaskStatusName
from reelserve.core.tasks import MAX_LIST_LIMIT
from reelserve.domain.task import TaskStatus

router = APIRouter(tags=["tasks"])
# The query parameters' exact values, in the OpenAPI document as enums (LANGUAGES, TaskStatus).
Language = Literal["en", "zh", "ko", "ja"]
Status = TaskStatusName
ONE_TASK: dict[int | str, dict[str, Any]] = {200: {"model": TaskAnswer, "description": "The task"}}


def _base_url(request: Request) -> str:
    return str(request.base_url)


@router.get(
    "/v1/tasks/{task_id}",
    summary="Get a task's status and result",
    responses={**ONE_TASK, **error_responses(401, 403, 404)},
)
async def get_task(
    task_id: str,
    request: Request,
    key: Key,
    service: Service,
    language: Language | None = Query(None, description="language of error messages"),
) -> Response:
    """Served by `api.fastpath` in front of the framework; this route documents it and answers
    whatever the fast path passes on."""
    check_language(language)
    return ok(await service.tasks.status(key, task_id, _base_url(request)))


@router.get(
    "/v1/tasks",
    summary="List the caller's tasks, newest first",
    responses={
        200: {"model": TaskPage, "description": "A page of tasks"},
        **error_responses(401, 403),
    },
)
async def list_tasks(
    request: Request,
    key: Key,
    service: Service,
    status: Status | None = Query(None),
    model: str | None = Query(None),
    limit: int = Query(20, ge=1, le=MAX_LIST_LIMIT),
    after: str | None = Query(None, description="the last task id of the previous page"),
) -> Response:
    rows, has_more = await service.tasks.page(
        key,
        status=TaskStatus(status) if status is not None else None,
        model=model,
        limit=limit,
        after=after,
    )
    base = _base_url(request)
    data = [await service.tasks.render(t, base) for t in rows]
    return ok(data, has_more=has_more, next_after=rows[-1].id if has_more and rows else None)


@router.post(
    "/v1/tasks/{task_id}/cancel",
    summary="Cancel a task",
    responses={**ONE_TASK, **error_responses(401, 403, 404, 409)},
)
async def cancel_task(task_id: str, request: Request, key: Key, service: Service) -> Response:
    task = await service.tasks.cancel(key, task_id)
    return ok(await service.tasks.render(task, _base_url(request)))
