"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reelserve.api.auth import Service
from reelserve.api.errors import error_responses
from reelserve.domain.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


PUBLIC: dict[str, Any] = {"security": []}  # no API key: for load balancers and Prometheus


@router.get("/healthz", summary="Liveness", responses=error_responses(), openapi_extra=PUBLIC)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database and storage reachable",
    responses=error_responses(503),
    openapi_extra=PUBLIC,
)
async def readyz(service: Service) -> dict[str, Any]:
    try:
        await service.ready()
    except Exception as exc:
        raise ServiceUnavailable(f"not ready: {type(exc).__name__}") from None
    return {"status": "ready"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
        **error_responses(),
    },
    openapi_extra=PUBLIC,
)
async def metrics(service: Service) -> Response:
    await service.refresh_metrics()
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
