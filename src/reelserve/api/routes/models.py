"""GET /v1/models: the configured models and what each can do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from reelserve.api.auth import Key, Service
from reelserve.api.errors import error_responses

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="List the configured models", responses=error_responses(401))
async def list_models(key: Key, service: Service) -> dict[str, Any]:
    data = []
    for entry in service.models.values():
        item = entry.public()
        runs_on = service.admission.runs_on(key, entry)
        item["available"] = runs_on is not None  # what submit accepts for this key
        item["runs_on"] = runs_on or entry.provider
        data.append(item)
    return {"code": 200, "object": "list", "data": data}
