"""GET /v1/tasks/{task_id}/webhooks: a task's webhook deliveries and their attempts."""

from __future__ import annotations

from fastapi import APIRouter, Response

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import error_responses

router = APIRouter(tags=["webhooks"])


@router.get(
    "/v1/tasks/{task_id}/webhooks",
    summary="List a task's webhook deliveries and their attempts",
    responses=error_responses(401, 403, 404),
)
async def task_webhooks(task_id: str, key: Key, service: Service) -> Response:
    return ok(await service.tasks.deliveries(key, task_id))
