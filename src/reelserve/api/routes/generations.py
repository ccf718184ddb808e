"""POST /v1/videos/generations: the seed's submit endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request, Response

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import IDEMPOTENCY_KEY_SCHEMA, error_responses
from reelserve.api.inputs import parse_json_body
from reelserve.api.routes.schemas import generation_body

router = APIRouter(tags=["generations"])


@router.post(
    "/v1/videos/generations",
    summary="Submit a video generation task",
    responses=error_responses(401, 402, 403, 409, 413, 429),
    openapi_extra=generation_body(
        {
            "model": "veo3.1-fast-official",
            "prompt": "a golden retriever running on the beach, sunset, cinematic",
            "duration": 8,
            "aspect_ratio": "16:9",
        }
    ),
)
async def submit_generation(
    request: Request,
    key: Key,
    service: Service,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", json_schema_extra=IDEMPOTENCY_KEY_SCHEMA
    ),
) -> Response:
    body = parse_json_body(await request.body())
    task = await service.tasks.submit(
        key, body, idempotency_key=idempotency_key, base_url=str(request.base_url)
    )
    return ok([{"status": "submitted", "task_id": task.id}])
