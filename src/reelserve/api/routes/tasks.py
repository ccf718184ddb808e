"""Task status, listing and cancellation."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from reelserve.api.auth import Key, Service
from reelserve.api.errors import ok
from reelserve.domain.errors import InvalidRequest
from reelserve.service import LANGUAGES

router = APIRouter(tags=["tasks"])


def _base_url(request: Request) -> str:
    return str(request.base_url)


def _check_language(language: str | None) -> None:
    if language is not None and language not in LANGUAGES:
        raise InvalidRequest(
            f"language must be one of {', '.join(LANGUAGES)} (got {language!r})", param="language"
        )


@router.get("/v1/tasks/{task_id}", summary="Get a task's status and result")
async def get_task(
    task_id: str,
    request: Request,
    key: Key,
    service: Service,
    language: str | None = Query(None, description="en | zh | ko | ja"),
) -> Response:
    """Served by `api.fastpath` in front of the framework; this route documents it and answers
    whatever the fast path passes on."""
    _check_language(language)
    return ok(await service.task_status(key, task_id, _base_url(request)))


@router.get("/v1/tasks", summary="List the caller's tasks, newest first")
async def list_tasks(
    request: Request,
    key: Key,
    service: Service,
    status: str | None = Query(None),
    model: str | None = Query(None),
    limit: int = Query(20),
    after: str | None = Query(None, description="the last task id of the previous page"),
) -> Response:
    rows, has_more = await service.list_tasks(
        key, status=status, model=model, limit=limit, after=after
    )
    base = _base_url(request)
    data = [await service.task_view(t, base) for t in rows]
    return ok(data, has_more=has_more, next_after=rows[-1].id if has_more and rows else None)


@router.post("/v1/tasks/{task_id}/cancel", summary="Cancel a task")
async def cancel_task(task_id: str, request: Request, key: Key, service: Service) -> Response:
    task = await service.cancel(key, task_id)
    return ok(await service.task_view(task, _base_url(request)))
