"""The task view's shape in the OpenAPI document: what `core.views.task_json` renders.

For the document only (routes answer the views' JSON directly, with no validation pass):
`tests/test_openapi.py` has schemathesis check every answer against these, so they stay true.
A member the view writes only in some states is optional here and says when it is present.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

TaskStatusName = Literal["pending", "processing", "completed", "failed", "cancelled"]


class TaskError(BaseModel):
    """Why a task failed, as the hosted API's task-status docs give it."""

    code: str = Field(
        description="stable machine code: content_filtered, upstream_error, timeout, "
        "invalid_image, out_of_memory, provider_not_configured, internal_error"
    )
    message: str
    type: Literal["invalid_request_error", "upstream_error", "server_error"] = Field(
        description="whose fault, in the error envelope's terms (docs/api.md lists each code's)"
    )


class Video(BaseModel):
    url: list[str] = Field(description="one signed link to the MP4")
    expires_at: int = Field(description="Unix seconds when the links stop working")
    thumbnail_url: str
    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool
    seed: int | None
    person_generation: str | None
    size_bytes: int
    content_type: Literal["video/mp4"]


class Withheld(BaseModel):
    code: str
    count: int
    message: str
    reasons: list[str]


class TaskResult(BaseModel):
    videos: list[Video]
    withheld: list[Withheld] | None = Field(
        None, description="samples the upstream did not deliver, when there are any"
    )
    expired: bool | None = Field(None, description="true once the files have been deleted")


class Task(BaseModel):
    """A task, as `GET /v1/tasks/{task_id}`, the listing, cancel, event streams and webhooks
    show it."""

    id: str
    status: TaskStatusName
    progress: int = Field(ge=0, le=100)
    model: str
    route: str = Field(
        description="the route serving the task (docs/routing.md): for a model of one route "
        "its provider (sandbox for a test key's tasks), else the route's name"
    )
    created: int = Field(description="Unix seconds")
    estimated_time: int = Field(description="the model's expected seconds from start to end")
    queue_position: int | None = Field(None, description="while pending: tasks ahead")
    completed: int | None = Field(None, description="once finished: Unix seconds")
    actual_time: int | None = Field(None, description="once finished: seconds it took")
    result: TaskResult | None = Field(None, description="once completed")
    error: TaskError | None = Field(None, description="once failed")


class TaskAnswer(BaseModel):
    code: Literal[200]
    data: Task


class TaskPage(BaseModel):
    code: Literal[200]
    data: list[Task]
    has_more: bool
    next_after: str | None = Field(description="the `after` of the next page, when there is one")


class Balance(BaseModel):
    """A key's balance on the ledger, in the price currency."""

    budget: float | None = Field(description="the key's budget; null: no budget")
    reserved: float = Field(description="held by the key's unfinished tasks")
    spent: float = Field(description="charged for the key's finished tasks")
    left: float | None = Field(description="budget - reserved - spent; null: no budget")
    currency: str


class Estimate(BaseModel):
    object: Literal["estimate"]
    model: str
    estimated_cost: float = Field(
        description="what a submit of this body reserves: the model's list price x seconds x "
        "samples, at the resolution and audio asked (the worst case over its backends)"
    )
    currency: str
    test: bool = Field(description="a test key: priced at the model's list price, no money")
    affordable: bool = Field(description="whether the key's budget covers it now")
    balance: Balance


class EstimateAnswer(BaseModel):
    code: Literal[200]
    data: Estimate


class ModelUsage(BaseModel):
    model: str
    tasks: int
    videos: int
    video_seconds: float
    cost: float
    currency: str


class RouteUsage(ModelUsage):
    route: str = Field(description="the route that served the tasks (docs/routing.md)")


class UsageTotal(BaseModel):
    currency: str
    tasks: int
    videos: int
    video_seconds: float
    cost: float


class LedgerEntry(BaseModel):
    id: int
    task_id: str
    kind: Literal["reserve", "settle", "release"] = Field(
        description="reserve: at submit; settle: the task completed and was charged `amount`; "
        "release: it failed or was cancelled and its reservation was given back"
    )
    model: str
    amount: float = Field(description="reserve, release: the reservation; settle: the charge")
    currency: str
    videos: int = Field(description="settle: the videos delivered")
    test: bool = Field(description="made by a test key (list prices, no money)")
    created: float = Field(description="Unix seconds")


class Limits(BaseModel):
    """A key's limits (`reelserve keys create|update`, the admin API); null: no limit."""

    max_running: int | None = Field(description="its tasks processing at once")
    rate_per_minute: int | None = Field(description="its submits in any 60 seconds")
    budget: float | None = Field(description="in the price currency")
    models: list[str] | None = Field(description="the model ids it may use; null: all")


class Usage(BaseModel):
    object: Literal["usage"]
    since: float | None
    until: float | None
    models: list[ModelUsage] = Field(description="completed tasks per model in the range")
    routes: list[RouteUsage] = Field(
        description="the same per model and route: which of its routes served them"
    )
    totals: list[UsageTotal]
    test: bool
    balance: Balance = Field(description="now, over all time")
    entries: list[LedgerEntry] = Field(description="the newest ledger entries in the range")
    limits: Limits


class UsageAnswer(BaseModel):
    code: Literal[200]
    data: Usage


def generation_body(example: dict[str, Any]) -> dict[str, Any]:
    """The `openapi_extra` of a route whose JSON body is a `GenerationRequest` (the submit, the
    estimate), with its example."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/GenerationRequest"},
                    "example": example,
                }
            },
        }
    }
