"""The claim: a worker takes runnable tasks under leases, oldest first.

A runnable task is a pending one, or a processing one whose lease expired (its worker died) and
that has attempts left. One statement takes up to `limit` of them; each gets its own lease token.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.store.db import begin_write
from reelserve.store.tables import tasks
from reelserve.store.task_rows import PENDING, PROCESSING, TaskRecord


class TaskClaims:
    """The claims of `TaskQueue` (queue.py), which sets `engine`."""

    engine: AsyncEngine

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    async def claim(
        self,
        token: str,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> TaskRecord | None:
        """Take the oldest runnable task under the lease token `token` (`claim_many`)."""
        claimed = await self._claim(
            sa.literal(token, sa.String),
            1,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            providers=providers,
            models=models,
        )
        return claimed[0] if claimed else None

    async def claim_many(
        self,
        prefix: str,
        limit: int,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Take up to `limit` runnable tasks, oldest first, in one statement: a pending one, or a
        processing one whose lease expired (its worker died) and that has attempts left. Each
        gets its own lease token, `prefix` followed by its id (`lease_token`). `FOR UPDATE SKIP
        LOCKED` on PostgreSQL; SQLite serialises writers, which makes the single UPDATE atomic
        there."""
        return await self._claim(
            sa.literal(prefix, sa.String) + tasks.c.id,
            limit,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            providers=providers,
            models=models,
        )

    async def _claim(
        self,
        owner: sa.ColumnElement[str],
        limit: int,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None,
        models: Collection[str] | None,
    ) -> list[TaskRecord]:
        now = time.time()
        runnable = sa.or_(
            tasks.c.status == PENDING,
            sa.and_(
                tasks.c.status == PROCESSING,
                tasks.c.lease_expires_at < now,
                tasks.c.attempts < max_attempts,
            ),
        )
        pick = sa.select(tasks.c.id).where(runnable)
        if providers is not None:
            pick = pick.where(tasks.c.provider.in_(list(providers)))
        if models is not None:
            pick = pick.where(tasks.c.model.in_(list(models)))
        pick = pick.order_by(tasks.c.created_at, tasks.c.id).limit(max(1, limit))
        # A materialised CTE: PostgreSQL then picks (and locks, skipping locked rows) once; an
        # `IN (subquery)` may be run again per row, each run skipping differently.
        picked = pick.with_for_update(skip_locked=True).cte("picked")
        if self.is_postgres:
            picked = picked.prefix_with("MATERIALIZED")
        stmt = (
            tasks.update()
            .where(tasks.c.id.in_(sa.select(picked.c.id)), runnable)
            .values(
                status=PROCESSING,
                lease_owner=owner,
                lease_expires_at=now + lease_seconds,
                attempts=tasks.c.attempts + 1,
                started_at=sa.func.coalesce(tasks.c.started_at, now),
                updated_at=now,
            )
            .returning(*tasks.c)
        )
        async with begin_write(self.engine) as conn:
            rows = (await conn.execute(stmt)).all()
        claimed = [TaskRecord.from_row(row) for row in rows]
        claimed.sort(key=lambda t: (t.created_at, t.id))
        return claimed
