"""Usage of every key by model and UTC day: what `GET /v1/admin/usage` reports.

Counted as `GET /v1/usage` counts (store/usage.py): only tasks that are completed. The day is
worked out in SQL from `recorded_at`, so the answer is one grouped read however many rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.task import TaskStatus
from reelserve.store.tables import tasks, usage

DAY_SECONDS = 86400


@dataclass(frozen=True)
class DayUsage:
    day: str  # YYYY-MM-DD, UTC
    api_key_id: str
    model: str
    currency: str
    tasks: int
    videos: int
    video_seconds: float
    cost: float


def _day_number(dialect: str) -> sa.ColumnElement[int]:
    """Whole days since the epoch of `recorded_at` (always positive: a cast truncates it on
    SQLite; PostgreSQL's cast would round, so it floors)."""
    days = usage.c.recorded_at / DAY_SECONDS
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(days), sa.BigInteger)
    return sa.cast(days, sa.Integer)


class DailyUsage:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def by_day(
        self, *, since: float | None = None, until: float | None = None
    ) -> list[DayUsage]:
        """Per day, key, model and currency, in that order: completed tasks, videos, seconds
        of video and cost recorded in [since, until)."""
        day = _day_number(self.engine.dialect.name).label("day")
        query = (
            sa.select(
                day,
                usage.c.api_key_id,
                usage.c.model,
                usage.c.currency,
                sa.func.count().label("tasks"),
                sa.func.sum(usage.c.videos).label("videos"),
                sa.func.sum(usage.c.video_seconds).label("video_seconds"),
                sa.func.sum(usage.c.cost).label("cost"),
            )
            .select_from(usage.join(tasks, tasks.c.id == usage.c.task_id))
            .where(tasks.c.status == TaskStatus.COMPLETED.value)
            .group_by(day, usage.c.api_key_id, usage.c.model, usage.c.currency)
            .order_by(day, usage.c.api_key_id, usage.c.model, usage.c.currency)
        )
        if since is not None:
            query = query.where(usage.c.recorded_at >= since)
        if until is not None:
            query = query.where(usage.c.recorded_at < until)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            DayUsage(
                day=datetime.fromtimestamp(int(r.day) * DAY_SECONDS, UTC).strftime("%Y-%m-%d"),
                api_key_id=str(r.api_key_id),
                model=str(r.model),
                currency=str(r.currency),
                tasks=int(r.tasks),
                videos=int(r.videos or 0),
                video_seconds=round(float(r.video_seconds or 0.0), 3),
                cost=round(float(r.cost or 0.0), 6),
            )
            for r in rows
        ]
