"""Read-only queries for observers: task event streams and the metrics scrape.

Both read the same task rows the workers write, so they see tasks run by any process. The queries
are batched: one read per tick serves every open event stream of a process, and one grouped count
per scrape gives the task gauges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.task import TaskStatus
from reelserve.store.queue import VIEW_COLUMNS, TaskRecord
from reelserve.store.tables import tasks

_VIEW_COLUMNS = [tasks.c[name] for name in VIEW_COLUMNS]
_IN_CHUNK = 500  # ids per IN (...) list


async def view_records(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, TaskRecord]:
    """The current rows of `ids` (missing ids are absent), without `spec` and `checkpoint`:
    the returned records carry an empty spec and no checkpoint. Meant for building task views."""
    found: dict[str, TaskRecord] = {}
    if not ids:
        return found
    async with engine.connect() as conn:
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = list(ids[start : start + _IN_CHUNK])
            rows = (
                await conn.execute(sa.select(*_VIEW_COLUMNS).where(tasks.c.id.in_(chunk)))
            ).all()
            for row in rows:
                record = TaskRecord.for_view(dict(row._mapping))
                found[record.id] = record
    return found


@dataclass(frozen=True)
class TaskStats:
    """What the metrics scrape reads from the store."""

    counts: dict[tuple[str, str], int]  # (model, status) -> tasks
    oldest_pending: dict[str, float]  # model -> created_at of its oldest pending task


async def task_stats(engine: AsyncEngine) -> TaskStats:
    async with engine.connect() as conn:
        counted = (
            await conn.execute(
                sa.select(tasks.c.model, tasks.c.status, sa.func.count()).group_by(
                    tasks.c.model, tasks.c.status
                )
            )
        ).all()
        oldest = (
            await conn.execute(
                sa.select(tasks.c.model, sa.func.min(tasks.c.created_at))
                .where(tasks.c.status == TaskStatus.PENDING.value)
                .group_by(tasks.c.model)
            )
        ).all()
    return TaskStats(
        counts={(str(m), str(s)): int(n) for m, s, n in counted},
        oldest_pending={str(m): float(t) for m, t in oldest if t is not None},
    )
