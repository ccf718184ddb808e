"""A task row as the store hands it out: the whole row (`TaskRecord`), or the columns a task's
public view is made of (`domain.result.TaskView`).

The whole row is for the worker and for the operations that need the spec (the OpenAI facade
shows the request's fields). Status polls, event streams and the metrics never read the spec
(it can hold data-URL images of several MB) or the checkpoint (the provider's own state): they
read `VIEW_COLUMNS` and get a `TaskView`, so no record ever stands for a row with parts missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from reelserve.domain.result import TaskResult, TaskView
from reelserve.domain.task import TaskStatus
from reelserve.store.tables import tasks

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value
FINISHED = (COMPLETED, FAILED, CANCELLED)


@dataclass(frozen=True)
class TaskRecord:
    """A whole task row."""

    id: str
    api_key_id: str
    model: str
    provider: str
    status: TaskStatus
    progress: int
    spec: dict[str, Any]
    checkpoint: dict[str, Any] | None
    result: TaskResult | None
    error_code: str | None
    error_message: str | None
    estimated_time: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None
    request_hash: str | None
    files_expired_at: float | None
    releases: int = 0

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> TaskRecord:
        values = dict(row._mapping)
        values["status"] = TaskStatus(values["status"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["result"] = parse_result(values["result"])
        return cls(**values)

    @classmethod
    def queued(
        cls,
        *,
        task_id: str,
        api_key_id: str,
        model: str,
        provider: str,
        spec: dict[str, Any],
        estimated_time: int,
        idempotency_key: str | None,
        request_hash: str | None,
    ) -> TaskRecord:
        """The row of a task just submitted: pending, never claimed."""
        now = time.time()
        row: dict[str, Any] = dict.fromkeys(f.name for f in fields(cls))  # NULL unless set here
        row.update(id=task_id, api_key_id=api_key_id, model=model, provider=provider, spec=spec)
        row.update(estimated_time=estimated_time, created_at=now, updated_at=now)
        row.update(idempotency_key=idempotency_key, request_hash=request_hash)
        row.update(status=TaskStatus.PENDING, progress=0, attempts=0, releases=0)
        row.update(cancel_requested=False)
        return cls(**row)

    def view(self, queue_position: int | None = None) -> TaskView:
        """The part of this row a view is made of (`queue_position` as the caller counted it)."""
        return TaskView(
            **{name: getattr(self, name) for name in VIEW_COLUMNS}, queue_position=queue_position
        )


# The columns of a `TaskView`, in its field order: every field but the queue position, which is
# counted, not stored.
VIEW_COLUMNS = tuple(f.name for f in fields(TaskView) if f.name != "queue_position")
assert set(VIEW_COLUMNS) <= set(tasks.c.keys()), "TaskView names a column the table lacks"


def view_from_row(row: Sequence[Any], queue_position: int | None = None) -> TaskView:
    """A `TaskView` from a row of `VIEW_COLUMNS`, in that order: a SQLAlchemy row, or a plain
    DB-API tuple (whose result is still JSON text)."""
    values = dict(zip(VIEW_COLUMNS, row, strict=True))
    values["status"] = TaskStatus(values["status"])
    values["result"] = parse_result(values["result"])
    return TaskView(**values, queue_position=queue_position)


def parse_result(value: object) -> TaskResult | None:
    """The result column as stored (JSON, or its text from a plain DB-API row) -> TaskResult."""
    if isinstance(value, str):
        value = json.loads(value)  # JSON's null included: SQLAlchemy stores None as 'null'
    if value is None:
        return None
    assert isinstance(value, dict)
    return TaskResult.from_json(value)
