"""GET /v1/usage: what the caller's completed tasks generated and cost, per model; its ledger
entries and its balance."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import error_responses
from reelserve.api.routes.schemas import UsageAnswer
from reelserve.core.usage import usage_report
from reelserve.store.ledger import MAX_ENTRIES

router = APIRouter(tags=["usage"])


# Unix seconds, an integer or decimal number: checked by FastAPI (a 400 naming the parameter).
UNIX_SECONDS = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"


def seconds(value: str | None) -> float | None:
    """A time parameter, its form checked against `UNIX_SECONDS`, as a number (or None)."""
    return float(value) if value else None


@router.get(
    "/v1/usage",
    summary="The caller's usage per model, its ledger entries and its balance",
    responses={
        200: {"model": UsageAnswer, "description": "The usage"},
        **error_responses(401, 403),
    },
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
    limit: int = Query(
        100, ge=1, le=MAX_ENTRIES, description="at most this many ledger entries, newest first"
    ),
) -> Response:
    report = await usage_report(
        service.usage,
        service.tasks.ledger,
        key,
        since=seconds(since),
        until=seconds(until),
        limit=limit,
        currency=service.tasks.pricing.currency,
    )
    return ok(report)
