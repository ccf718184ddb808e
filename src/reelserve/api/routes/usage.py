"""GET /v1/usage: what the caller's completed tasks generated and cost, per model."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from reelserve.api.auth import Key, Service
from reelserve.api.errors import error_responses, ok

router = APIRouter(tags=["usage"])


UNIX_SECONDS = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"


@router.get(
    "/v1/usage",
    summary="The caller's usage: videos, seconds and cost per model",
    responses=error_responses(401),
)
async def get_usage(
    key: Key,
    service: Service,
    since: str | None = Query(
        None, pattern=UNIX_SECONDS, description="Unix seconds; only usage recorded from then"
    ),
    until: str | None = Query(
        None, pattern=UNIX_SECONDS, description="Unix seconds; only usage recorded before then"
    ),
) -> Response:
    return ok(await service.usage_report(key, since=since, until=until))
