"""POST /v1/videos/estimates: what a submit of the same body would reserve, and whether the
key can afford it now. Checked exactly as a submit; queues nothing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import error_responses
from reelserve.api.inputs import parse_json_body
from reelserve.api.routes.schemas import EstimateAnswer, generation_body

router = APIRouter(tags=["generations"])


@router.post(
    "/v1/videos/estimates",
    summary="Estimate a generation's cost (the same body as a submit)",
    responses={
        200: {"model": EstimateAnswer, "description": "The estimate and the key's balance"},
        **error_responses(401, 403, 413),
    },
    openapi_extra=generation_body(
        {
            "model": "veo3.1-fast-official",
            "prompt": "a golden retriever running on the beach, sunset, cinematic",
            "duration": 8,
            "resolution": "1080p",
        }
    ),
)
async def estimate_generation(request: Request, key: Key, service: Service) -> Response:
    body = parse_json_body(await request.body())
    return ok(await service.tasks.estimate(key, body))
