"""Upkeep of the task table, beside the queue proper: failing tasks that ran out of attempts
(the reaper), marking files expired (the retention sweeper), and deleting finished rows.

None of these touch a task a worker runs: the reaper takes only expired leases, and the rest
only finished tasks, which never change again.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.task import ErrorCode
from reelserve.store import ledger
from reelserve.store.db import begin_write
from reelserve.store.tables import tasks
from reelserve.store.task_rows import FAILED, FINISHED, PROCESSING


class TaskMaintenance:
    """The upkeep of `TaskQueue` (queue.py), which sets `engine`."""

    engine: AsyncEngine

    async def fail_exhausted(self, max_attempts: int) -> list[str]:
        """Fail tasks whose lease expired after their last allowed attempt: no task stays stuck.
        Their reservations are released in the same transaction (store/ledger.py)."""
        now = time.time()
        where = sa.and_(
            tasks.c.status == PROCESSING,
            tasks.c.lease_expires_at < now,
            tasks.c.attempts >= max_attempts,
        )
        # Lock them in task id order, skipping rows another transaction holds: a worker's
        # lease renewal and its grouped writes lock in that order too (store/groups.py), and a
        # row held by one is not expired for long (a renewal) or is left to the next pass.
        # The reaper locking in scan order met renewals in deadlocks at 10,000 tasks in flight.
        # SQLite has no row locks (and ignores FOR UPDATE): the write lock serialises them.
        expired = sa.select(tasks.c.id).where(where).order_by(tasks.c.id)
        async with begin_write(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                expired = expired.with_for_update(skip_locked=True)
            ids = [r[0] for r in (await conn.execute(expired)).all()]
            if ids:
                failed = await conn.execute(
                    tasks.update()
                    .where(where, tasks.c.id.in_(ids))
                    .values(
                        status=FAILED,
                        error_code=ErrorCode.INTERNAL_ERROR.value,
                        error_message=(
                            f"the task was interrupted {max_attempts} times "
                            "(its worker was lost or had to stop); giving up"
                        ),
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    .returning(tasks.c.id)
                )
                ids = [r[0] for r in failed.all()]  # those still exhausted when updated
                await ledger.release(conn, ids)
        return ids

    async def expired_files(self, before: float, limit: int = 100) -> list[str]:
        """Finished tasks whose files are due for deletion (finished before `before`)."""
        query = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.status.in_(FINISHED),
                tasks.c.finished_at < before,
                tasks.c.files_expired_at.is_(None),
            )
            .order_by(tasks.c.finished_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def mark_files_expired(self, task_id: str) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.files_expired_at.is_(None))
                .values(files_expired_at=time.time())
            )

    async def delete_finished(self, task_id: str, api_key_id: str) -> bool:
        """Delete a finished task's row (its owner deleted it; its files are already gone)."""
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.delete().where(
                    tasks.c.id == task_id,
                    tasks.c.api_key_id == api_key_id,
                    tasks.c.status.in_(FINISHED),
                )
            )
        return bool(done.rowcount)
