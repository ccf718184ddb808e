"""The admin API, `/v1/admin/*`: keys (list, create, update limits, revoke) and every key's usage.

HTTP only: each route reads its body or query and calls `core.admin.Admin`, which refuses any
caller but an admin key (403) and checks every member (400 naming it). The schemas below are for
the OpenAPI document; `tests/test_admin_api.py` checks the answers against them.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import ok
from reelserve.api.errors import ERROR_DESCRIPTIONS, ErrorEnvelope
from reelserve.api.inputs import parse_json_body
from reelserve.api.routes.schemas import Balance, UsageTotal
from reelserve.api.routes.usage import UNIX_SECONDS, seconds
from reelserve.core.admin import MAX_NAME
from reelserve.domain.limits import MAX_BUDGET, MAX_COUNT, MAX_MODELS

router = APIRouter(tags=["admin"])

_NOT_ADMIN = "The API key is not an admin key (`reelserve keys create --admin`)"


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {**ERROR_DESCRIPTIONS, 403: _NOT_ADMIN, 404: "No key with this id or prefix"}
    return {
        status: {"model": ErrorEnvelope, "description": described[status]}
        for status in sorted({400, 401, 403, *statuses})
    }


class AdminKey(BaseModel):
    """A key as the admin API shows it: its shown prefix, never its secret."""

    id: str
    object: Literal["api_key"]
    name: str
    mode: Literal["live", "test"]
    prefix: str = Field(description="the first 12 characters of the secret, as `keys list` shows")
    admin: bool
    created: int = Field(description="Unix seconds")
    revoked: int | None = Field(description="Unix seconds, once revoked")
    max_running: int | None = Field(description="tasks processing at once; null: no limit")
    rate_per_minute: int | None = Field(description="submits in any 60 s; null: no limit")
    budget: float | None = Field(description="in the price currency; null: unlimited")
    models: list[str] | None = Field(description="the model ids it may use; null: all")
    balance: Balance = Field(
        description="on the ledger, now: what `reelserve keys show` and the key's own "
        "`GET /v1/usage` show"
    )


class CreatedKey(AdminKey):
    secret: str = Field(description="the API key: shown only in this answer")
    webhook_secret: str = Field(description="its webhook signing secret: shown only here")


class KeyAnswer(BaseModel):
    code: Literal[200]
    data: AdminKey


class CreatedAnswer(BaseModel):
    code: Literal[200]
    data: CreatedKey


class KeyList(BaseModel):
    code: Literal[200]
    data: list[AdminKey]


class DayUsage(BaseModel):
    day: str = Field(description="YYYY-MM-DD, UTC")
    api_key_id: str
    model: str
    tasks: int
    videos: int
    video_seconds: float
    cost: float
    currency: str


class KeyBalance(Balance):
    """A tenant key's balance on the ledger."""

    api_key_id: str


class AdminUsage(BaseModel):
    object: Literal["admin.usage"]
    since: float | None
    until: float | None
    days: list[DayUsage] = Field(description="completed tasks by UTC day, key and model")
    totals: list[UsageTotal]
    keys: list[KeyBalance] = Field(
        description="every key but the admin keys, its balance on the ledger now (all time)"
    )


class AdminUsageAnswer(BaseModel):
    code: Literal[200]
    data: AdminUsage


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_COUNT}
LIMITS_SCHEMA: dict[str, Any] = {
    "max_running": _nullable({**_COUNT, "description": "tasks processing at once"}),
    "rate_per_minute": _nullable({**_COUNT, "description": "submits in any 60 seconds"}),
    "budget": _nullable(
        {"type": "number", "minimum": 0, "maximum": MAX_BUDGET, "description": "price currency"}
    ),
    "models": _nullable(
        {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": MAX_MODELS,
            "description": "configured model ids (GET /v1/models)",
        }
    ),
}


def _body(properties: dict[str, Any], description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "description": description,
        "properties": properties,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


CREATE_BODY = _body(
    {
        "mode": _nullable({"type": "string", "enum": ["live", "test"]}),
        "name": _nullable({"type": "string", "maxLength": MAX_NAME}),
        "admin": _nullable({"type": "boolean"}),
        **LIMITS_SCHEMA,
    },
    "mode is required unless admin is true (an admin key has no mode or limits of use); "
    "limits left out or null are no limit",
)
PATCH_BODY = _body(
    LIMITS_SCHEMA, "only the limits given change; null clears one; the others stay as they were"
)


@router.get(
    "/v1/admin/keys",
    summary="List every API key with its limits (admin)",
    responses={200: {"model": KeyList, "description": "The keys"}, **_responses()},
)
async def list_keys(key: Key, service: Service) -> Response:
    return ok(await service.admin.list_keys(key))


@router.post(
    "/v1/admin/keys",
    summary="Create an API key (admin); its secrets are answered once",
    responses={200: {"model": CreatedAnswer, "description": "The new key"}, **_responses(413)},
    openapi_extra=CREATE_BODY,
)
async def create_key(request: Request, key: Key, service: Service) -> Response:
    body = parse_json_body(await request.body())
    return ok(await service.admin.create_key(key, body))


@router.patch(
    "/v1/admin/keys/{key_id}",
    summary="Change a key's limits (admin)",
    responses={200: {"model": KeyAnswer, "description": "The key"}, **_responses(404, 413)},
    openapi_extra=PATCH_BODY,
)
async def update_key(key_id: str, request: Request, key: Key, service: Service) -> Response:
    body = parse_json_body(await request.body())
    return ok(await service.admin.update_key(key, key_id, body))


@router.delete(
    "/v1/admin/keys/{key_id}",
    summary="Revoke a key (admin)",
    responses={200: {"model": KeyAnswer, "description": "The revoked key"}, **_responses(404)},
)
async def revoke_key(key_id: str, key: Key, service: Service) -> Response:
    return ok(await service.admin.revoke_key(key, key_id))


@router.get(
    "/v1/admin/usage",
    summary="Every key's usage by UTC day and model (admin)",
    responses={200: {"model": AdminUsageAnswer, "description": "The usage"}, **_responses()},
)
async def admin_usage(
    key: Key,
    service: Service,
    since: str | None = Query(
        None, pattern=UNIX_SECONDS, description="Unix seconds; only usage recorded from then"
    ),
    until: str | None = Query(
        None, pattern=UNIX_SECONDS, description="Unix seconds; only usage recorded before then"
    ),
) -> Response:
    report = await service.admin.usage_report(key, since=seconds(since), until=seconds(until))
    return ok(report)
