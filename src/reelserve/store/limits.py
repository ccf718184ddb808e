"""The reads behind a key's submit limits: its newest submits of the last minute, and whether an
Idempotency-Key names a task it already has.

Both read the tasks table, shared by every server process, so a rate holds across processes:
`recent_submits` is one range read of the `ix_tasks_key_created` index, at most `limit` rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.store.tables import tasks


def recent_submits_query(api_key_id: str, since: float, limit: int) -> sa.Select[Any]:
    """`SELECT created_at FROM tasks WHERE api_key_id = :key AND created_at > :since ORDER BY
    created_at DESC LIMIT :limit`: the key's newest tasks created after `since`."""
    return (
        sa.select(tasks.c.created_at)
        .where(tasks.c.api_key_id == api_key_id, tasks.c.created_at > since)
        .order_by(tasks.c.created_at.desc())
        .limit(limit)
    )


class LimitReads:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def recent_submits(self, api_key_id: str, since: float, limit: int) -> list[float]:
        """The creation times of the key's newest `limit` tasks created after `since`."""
        async with self.engine.connect() as conn:
            times = (await conn.execute(recent_submits_query(api_key_id, since, limit))).scalars()
            return [float(t) for t in times]

    async def has_idempotent_task(
        self, api_key_id: str, idempotency_key: str, not_before: float
    ) -> bool:
        """Whether the key has a task under this Idempotency-Key created at or after
        `not_before` (a submit with it replays that task rather than making one)."""
        query = sa.select(tasks.c.id).where(
            tasks.c.api_key_id == api_key_id,
            tasks.c.idempotency_key == idempotency_key,
            tasks.c.created_at >= not_before,
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None
