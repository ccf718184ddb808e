"""Usage accounting: one row per completed task, and the totals `GET /v1/usage` reports.

The worker records a task's row just before it marks the task completed (idempotently: the
task id is the primary key, and a second write of the same task changes nothing). The totals
count only tasks that are completed, so a row written by an attempt that then lost its lease
and never completed the task counts for nothing, and a worker crash between the two writes
loses no row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.task import TaskStatus
from reelserve.store.db import begin_write
from reelserve.store.tables import tasks, usage


@dataclass(frozen=True)
class UsageRecord:
    task_id: str
    api_key_id: str
    model: str
    provider: str
    videos: int
    video_seconds: float
    has_audio: bool
    cost: float
    currency: str
    credential: str | None


@dataclass(frozen=True)
class ModelUsage:
    """The totals of one model in one currency over a time range."""

    model: str
    currency: str
    tasks: int
    videos: int
    video_seconds: float
    cost: float
    route: str | None = None  # with `by_route`: the route that served them (docs/routing.md)


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(self, row: UsageRecord, *, at: float | None = None) -> bool:
        """Insert a task's row unless it exists. Returns whether this call inserted it."""
        async with begin_write(self.engine) as conn:
            result = await conn.execute(self.insert(row, at=at))
        return bool(result.rowcount)

    def insert(self, row: UsageRecord, *, at: float | None = None) -> sa.Insert:
        """The statement that inserts a task's row unless it exists (for a transaction of the
        caller's: a completion writes it with the task's final state, TaskQueue.complete)."""
        values: dict[str, Any] = {
            "task_id": row.task_id,
            "api_key_id": row.api_key_id,
            "model": row.model,
            "provider": row.provider,
            "videos": row.videos,
            "video_seconds": row.video_seconds,
            "has_audio": row.has_audio,
            "cost": row.cost,
            "currency": row.currency,
            "credential": row.credential,
            "recorded_at": time.time() if at is None else at,
        }
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(usage).values(**values).on_conflict_do_nothing()
        if dialect == "sqlite":
            return sqlite.insert(usage).values(**values).on_conflict_do_nothing()
        raise RuntimeError(f"unsupported database dialect {dialect}")  # pragma: no cover

    async def get(self, task_id: str) -> UsageRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(usage).where(usage.c.task_id == task_id))).first()
        if row is None:
            return None
        values = dict(row._mapping)
        values.pop("recorded_at")
        return UsageRecord(**values)

    async def totals(
        self,
        api_key_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        by_route: bool = False,
    ) -> list[ModelUsage]:
        """Per model and currency (and route, `by_route`: the usage row's provider, which is
        the task's route): completed tasks, videos, seconds of video and cost recorded in
        [since, until) for this API key."""
        group = [usage.c.model, usage.c.provider] if by_route else [usage.c.model]
        query = (
            sa.select(
                *group,
                usage.c.currency,
                sa.func.count().label("tasks"),
                sa.func.sum(usage.c.videos).label("videos"),
                sa.func.sum(usage.c.video_seconds).label("video_seconds"),
                sa.func.sum(usage.c.cost).label("cost"),
            )
            .select_from(usage.join(tasks, tasks.c.id == usage.c.task_id))
            .where(
                usage.c.api_key_id == api_key_id,
                tasks.c.status == TaskStatus.COMPLETED.value,
            )
            .group_by(*group, usage.c.currency)
            .order_by(*group, usage.c.currency)
        )
        if since is not None:
            query = query.where(usage.c.recorded_at >= since)
        if until is not None:
            query = query.where(usage.c.recorded_at < until)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ModelUsage(
                model=str(r.model),
                currency=str(r.currency),
                tasks=int(r.tasks),
                videos=int(r.videos or 0),
                video_seconds=round(float(r.video_seconds or 0.0), 3),
                cost=round(float(r.cost or 0.0), 6),
                route=str(r.provider) if by_route else None,
            )
            for r in rows
        ]
