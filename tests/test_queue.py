"""The durable queue on both engines: transitions, fencing, leases, reclaim, cancel, idempotency."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import task_id
from reelserve.domain.limits import KeyLimits
from reelserve.domain.result import StoredVideo, TaskResult, TaskView
from reelserve.domain.task import TaskStatus
from reelserve.store.db import create_engine, current_revision, head_revision, upgrade
from reelserve.store.keys import KeyStore
from reelserve.store.queue import CancelOutcome, IdempotencyConflict, TaskQueue
from reelserve.store.reads import PostgresReader, sqlite_path
from reelserve.store.tables import CANCEL_REQUESTED, tasks
from tests.databases import admin_sql, database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture()
async def queue(db_url: str) -> AsyncIterator[TaskQueue]:
    engine: AsyncEngine = create_engine(db_url)
    await upgrade(engine)
    await upgrade(engine)  # migrating twice is a no-op
    yield TaskQueue(engine)
    await engine.dispose()


NO_VIDEOS = TaskResult(videos=(), expires_at=0)


async def _submit(queue: TaskQueue, key: str = "key_a", **kw: object) -> str:
    tid = task_id()
    task, created = await queue.submit(
        task_id=tid,
        api_key_id=key,
        model="sandbox",
        provider=str(kw.get("provider", "sandbox")),
        spec={"prompt": "x"},
        estimated_time=5,
    )
    assert created and task.status is TaskStatus.PENDING and task.progress == 0
    return tid


async def test_the_task_table_leaves_room_for_updates_in_place(queue: TaskQueue) -> None:
    """PostgreSQL: the task table's pages are filled to 60% (migration 0010), so that the lease
    renewals of thousands of running tasks are HOT updates, which write no index entry: after
    five renewals of 300 leases, most updates were HOT. (SQLite has no such setting.)"""
    if not queue.is_postgres:
        return
    async with queue.engine.connect() as conn:
        options = (
            await conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = 'tasks'"))
        ).scalar_one()
    assert "fillfactor=60" in (options or [])
    ids = [await _submit(queue) for _ in range(300)]
    assert len(await queue.claim_many("f:", 300, lease_seconds=30, max_attempts=3)) == 300
    async with queue.engine.connect() as conn:
        before = await _updates(conn)
    for _ in range(5):
        owned = await queue.heartbeat_many([(t, f"f:{t}") for t in ids], lease_seconds=30)
        assert len(owned) == 300
    async with queue.engine.connect() as conn:
        for _ in range(50):  # the statistics collector reports within a second or so
            updated, hot = (a - b for a, b in zip(await _updates(conn), before, strict=True))
            if updated >= 1500:
                break
            await asyncio.sleep(0.1)
    assert updated >= 1500 and hot > updated * 0.6, (updated, hot)


async def _updates(conn: Any) -> tuple[int, int]:
    """(row updates, HOT ones) of the task table, from PostgreSQL's statistics (this
    backend's own counts are flushed at the end of each transaction; pg_stat_clear_snapshot
    makes the next read fresh)."""
    await conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
    row = (
        await conn.execute(
            sa.text(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'tasks'"
            )
        )
    ).one()
    await conn.rollback()
    return int(row[0]), int(row[1])


async def test_full_lifecycle_and_fencing(queue: TaskQueue) -> None:
    tid = await _submit(queue)
    claimed = await queue.claim("w1", lease_seconds=30, max_attempts=3)
    assert claimed is not None and claimed.id == tid
    assert claimed.status is TaskStatus.PROCESSING and claimed.attempts == 1
    assert await queue.claim("w2", lease_seconds=30, max_attempts=3) is None

    assert await queue.heartbeat(tid, "w1", lease_seconds=30, progress=40) == (True, False)
    await queue.heartbeat(tid, "w1", lease_seconds=30, progress=10)
    task = await queue.get(tid)
    assert task is not None and task.progress == 40  # never decreases

    assert await queue.checkpoint(tid, "w1", {"op": "operations/1"})
    assert not await queue.checkpoint(tid, "w2", {"op": "x"})
    assert not await queue.complete(tid, "w2", NO_VIDEOS)  # not the owner
    assert await queue.complete(tid, "w1", NO_VIDEOS)
    assert not await queue.complete(tid, "w1", NO_VIDEOS)  # finished never changes
    assert not await queue.fail(tid, "w1", "internal_error", "late")
    task = await queue.get(tid)
    assert task is not None
    assert task.status is TaskStatus.COMPLETED and task.progress == 100
    assert task.checkpoint == {"op": "operations/1"} and task.error_code is None


async def test_expired_lease_is_resumed_and_old_owner_fenced(queue: TaskQueue) -> None:
    tid = await _submit(queue)
    assert await queue.claim("dead", lease_seconds=0.2, max_attempts=3) is not None
    await queue.checkpoint(tid, "dead", {"step": 3})
    await queue.heartbeat(tid, "dead", lease_seconds=0.2, progress=30)
    await asyncio.sleep(0.3)
    resumed = await queue.claim("alive", lease_seconds=30, max_attempts=3)
    assert resumed is not None and resumed.id == tid
    assert resumed.attempts == 2
    assert resumed.checkpoint == {"step": 3} and resumed.progress == 30
    assert await queue.heartbeat(tid, "dead", lease_seconds=30) == (False, False)
    assert not await queue.complete(tid, "dead", NO_VIDEOS)
    assert await queue.complete(tid, "alive", NO_VIDEOS)


async def test_a_stale_token_is_refused_by_every_fenced_write(queue: TaskQueue) -> None:
    """The attempt that lost its lease (another attempt resumed the task) can change nothing:
    not the lease, progress, checkpoint or outcome; and once the task finished, neither can the
    attempt that finished it."""
    tid = await _submit(queue)
    assert await queue.claim("stale", lease_seconds=0.2, max_attempts=3) is not None
    await asyncio.sleep(0.3)
    assert await queue.claim("fresh", lease_seconds=30, max_attempts=3) is not None
    assert await queue.checkpoint(tid, "fresh", {"op": "operations/2"})
    before = await queue.get(tid)

    assert await queue.heartbeat(tid, "stale", lease_seconds=30, progress=90) == (False, False)
    assert (
        await queue.heartbeat_many([(tid, "stale")], lease_seconds=30, progress={"stale": 90}) == {}
    )
    assert not await queue.checkpoint(tid, "stale", {"op": "operations/1"})
    assert not await queue.complete(tid, "stale", NO_VIDEOS)
    assert not await queue.fail(tid, "stale", "internal_error", "late")
    assert not await queue.mark_cancelled(tid, "stale")
    assert not await queue.release(tid, "stale")
    assert await queue.get(tid) == before  # not one column changed

    assert await queue.fail(tid, "fresh", "upstream_error", "refused")
    finished = await queue.get(tid)
    assert finished is not None and finished.status is TaskStatus.FAILED
    assert not await queue.checkpoint(tid, "fresh", {"op": "x"})
    assert not await queue.complete(tid, "fresh", NO_VIDEOS)
    assert not await queue.release(tid, "fresh")
    assert await queue.heartbeat(tid, "fresh", lease_seconds=30) == (False, False)
    assert await queue.get(tid) == finished


async def test_batched_renewal_is_fenced_per_attempt(queue: TaskQueue) -> None:
    """One statement renews every lease of a worker; an attempt whose lease expired and whose
    task another attempt took gets nothing renewed and writes no progress."""
    a, b, c = [await _submit(queue) for _ in range(3)]
    assert await queue.claim("w:a", lease_seconds=30, max_attempts=3) is not None
    assert await queue.claim("w:b", lease_seconds=0.2, max_attempts=3) is not None
    assert await queue.claim("w:c", lease_seconds=30, max_attempts=3) is not None
    await asyncio.sleep(0.3)
    taken = await queue.claim("other:b", lease_seconds=30, max_attempts=3)
    assert taken is not None and taken.id == b
    assert (await queue.cancel(c, "key_a"))[0] is CancelOutcome.REQUESTED
    owned = await queue.heartbeat_many(
        [(a, "w:a"), (b, "w:b"), (c, "w:c"), (a, "w:forged")],
        lease_seconds=30,
        progress={"w:a": 40, "w:b": 70, "w:forged": 90},
    )
    assert owned == {"w:a": False, "w:c": True}  # b was lost; c's cancel is reported
    rows = {t: await queue.get(t) for t in (a, b, c)}
    assert rows[a] is not None and rows[a].progress == 40
    assert rows[b] is not None and rows[b].progress == 0  # the lost attempt wrote nothing
    # Progress never decreases, and the attempt that holds b now renews it.
    await queue.heartbeat_many([(a, "w:a")], lease_seconds=30, progress={"w:a": 10})
    again = await queue.get(a)
    assert again is not None and again.progress == 40
    assert await queue.heartbeat_many([(b, "other:b")], lease_seconds=30) == {"other:b": False}
    assert await queue.heartbeat_many([], lease_seconds=30) == {}


async def test_exhausted_attempts_fail_the_task(queue: TaskQueue) -> None:
    tid = await _submit(queue)
    for n in range(2):
        assert await queue.claim(f"w{n}", lease_seconds=0.05, max_attempts=2) is not None
        await asyncio.sleep(0.1)
    assert await queue.claim("w9", lease_seconds=30, max_attempts=2) is None
    assert await queue.fail_exhausted(2) == [tid]
    task = await queue.get(tid)
    assert task is not None and task.status is TaskStatus.FAILED
    assert task.error_code == "internal_error" and "interrupted" in (task.error_message or "")


async def test_the_reaper_leaves_a_row_another_transaction_holds_to_its_next_pass(
    queue: TaskQueue,
) -> None:
    """On PostgreSQL the reaper locks expired rows in id order, skipping any another transaction
    holds (a renewal of that very lease, a group's write): it fails the others now and the held
    one at its next pass, instead of waiting on it or meeting it in a deadlock. (SQLite has one
    writer at a time: nothing is held while the reaper runs.)"""
    ids = sorted([await _submit(queue), await _submit(queue), await _submit(queue)])
    for _ in ids:
        assert await queue.claim("w", lease_seconds=0.05, max_attempts=1) is not None
    await asyncio.sleep(0.1)
    if not queue.is_postgres:
        assert sorted(await queue.fail_exhausted(1)) == ids
        return
    async with queue.engine.connect() as holder:
        await holder.execute(sa.select(tasks.c.id).where(tasks.c.id == ids[1]).with_for_update())
        failed = await asyncio.wait_for(queue.fail_exhausted(1), 10)
        assert sorted(failed) == [ids[0], ids[2]]
        await holder.rollback()
    assert await queue.fail_exhausted(1) == [ids[1]]
    held = await queue.get(ids[1])
    assert held is not None and held.status is TaskStatus.FAILED


async def test_release_hands_back_without_spending_an_attempt(queue: TaskQueue) -> None:
    tid = await _submit(queue)
    assert await queue.claim("w1", lease_seconds=30, max_attempts=1) is not None
    assert await queue.release(tid, "w1")
    again = await queue.claim("w2", lease_seconds=30, max_attempts=1)
    assert again is not None and again.id == tid and again.attempts == 1
    assert again.status is TaskStatus.PROCESSING


async def test_cancel_outcomes(queue: TaskQueue) -> None:
    pending = await _submit(queue)
    running = await _submit(queue)
    outcome, task = await queue.cancel(pending, "key_a")
    assert outcome is CancelOutcome.CANCELLED and task is not None
    assert task.status is TaskStatus.CANCELLED and task.finished_at is not None
    claimed = await queue.claim("w", lease_seconds=30, max_attempts=3)
    assert claimed is not None and claimed.id == running  # the cancelled one is never claimed
    outcome, _ = await queue.cancel(running, "key_other")
    assert outcome is CancelOutcome.NOT_FOUND
    outcome, task = await queue.cancel(running, "key_a")
    assert outcome is CancelOutcome.REQUESTED and task is not None
    assert task.status is TaskStatus.PROCESSING
    assert await queue.heartbeat(running, "w", lease_seconds=30) == (True, True)
    assert await queue.mark_cancelled(running, "w")
    outcome, _ = await queue.cancel(running, "key_a")
    assert outcome is CancelOutcome.FINISHED


async def test_claim_order_and_filters(queue: TaskQueue) -> None:
    first = await _submit(queue)
    veo = await _submit(queue, provider="google_veo")
    second = await _submit(queue)
    got = await queue.claim("a", lease_seconds=30, max_attempts=3, providers={"google_veo"})
    assert got is not None and got.id == veo
    got = await queue.claim("b", lease_seconds=30, max_attempts=3, providers={"sandbox"})
    assert got is not None and got.id == first
    got = await queue.claim("c", lease_seconds=30, max_attempts=3, models={"other"})
    assert got is None
    got = await queue.claim("d", lease_seconds=30, max_attempts=3)
    assert got is not None and got.id == second


async def test_a_claim_that_finds_nothing_takes_no_write_lock_on_sqlite(
    queue: TaskQueue, db_url: str
) -> None:
    """SQLite: a claim first asks the read-only reader whether anything is runnable for its
    providers and models; where nothing is, it returns at once without SQLite's write lock,
    which another connection holds here (the claim would otherwise wait for it). Where a
    pending or a resumable task is there, the claim waits for the lock and takes it."""
    path = sqlite_path(db_url)
    if path is None:
        return  # PostgreSQL claims take no database-wide lock
    tid = await _submit(queue)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        for kw in ({"providers": {"google_veo"}}, {"models": {"other"}}):
            got = await asyncio.wait_for(
                queue.claim_many("n:", 5, lease_seconds=30, max_attempts=3, **kw), 5
            )
            assert got == []
        waiting = asyncio.ensure_future(
            queue.claim_many("w:", 5, lease_seconds=0.05, max_attempts=3, providers={"sandbox"})
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the pending task is runnable: the claim waits for the lock
        holder.execute("COMMIT")
        assert [t.id for t in await asyncio.wait_for(waiting, 30)] == [tid]
        await asyncio.sleep(0.1)  # its lease expires: resumable on a second attempt
        holder.execute("BEGIN IMMEDIATE")
        exhausted = queue.claim_many("x:", 5, lease_seconds=30, max_attempts=1)
        assert await asyncio.wait_for(exhausted, 5) == []
        waiting = asyncio.ensure_future(queue.claim_many("r:", 5, lease_seconds=30, max_attempts=3))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        holder.execute("COMMIT")
        resumed = await asyncio.wait_for(waiting, 30)
        assert [(t.id, t.attempts) for t in resumed] == [(tid, 2)]
    finally:
        holder.close()


async def test_concurrent_claims_never_share_a_task(queue: TaskQueue) -> None:
    ids = {await _submit(queue) for _ in range(30)}

    async def drain(name: str) -> list[str]:
        got = []
        while (task := await queue.claim(name, lease_seconds=30, max_attempts=3)) is not None:
            got.append(task.id)
        return got

    results = await asyncio.gather(*(drain(f"w{i}") for i in range(4)))
    flat = [t for r in results for t in r]
    assert sorted(flat) == sorted(ids)
    assert len(set(flat)) == len(flat)


async def test_claim_many_takes_the_oldest_each_under_its_own_token(queue: TaskQueue) -> None:
    ids = [await _submit(queue) for _ in range(7)]
    first = await queue.claim_many("w:1:", 5, lease_seconds=30, max_attempts=3)
    assert [t.id for t in first] == ids[:5]  # oldest first, at most the limit
    assert [t.lease_owner for t in first] == [f"w:1:{t.id}" for t in first]
    assert all(t.status is TaskStatus.PROCESSING and t.attempts == 1 for t in first)
    rest = await queue.claim_many("w:2:", 5, lease_seconds=30, max_attempts=3)
    assert [t.id for t in rest] == ids[5:]
    assert await queue.claim_many("w:3:", 5, lease_seconds=30, max_attempts=3) == []
    # Each token fences its own task only.
    assert await queue.checkpoint(ids[0], f"w:1:{ids[0]}", {"n": 1})
    assert not await queue.checkpoint(ids[1], f"w:1:{ids[0]}", {"n": 1})


async def test_concurrent_batch_claims_never_share_a_task(queue: TaskQueue) -> None:
    ids = {await _submit(queue) for _ in range(60)}

    async def drain(name: str) -> list[str]:
        got: list[str] = []
        while batch := await queue.claim_many(f"{name}:", 7, lease_seconds=30, max_attempts=3):
            got.extend(t.id for t in batch)
        return got

    results = await asyncio.gather(*(drain(f"w{i}") for i in range(4)))
    flat = [t for r in results for t in r]
    assert sorted(flat) == sorted(ids)
    assert len(set(flat)) == len(flat)


async def test_grouped_writes_keep_each_fence(queue: TaskQueue) -> None:
    """Fenced writes of many attempts at one moment share transactions (group commit), and
    each still changes only its own task, only under its own token."""
    ids = [await _submit(queue) for _ in range(150)]
    claimed = await queue.claim_many("g:", 150, lease_seconds=30, max_attempts=3)
    assert len(claimed) == 150
    before = queue.writes.groups
    writes = []
    for i, tid in enumerate(ids):
        token = f"g:{tid}" if i % 2 == 0 else "g:someone-else"
        writes.append(queue.checkpoint(tid, token, {"i": i}))
    results = await asyncio.gather(*writes)
    assert results == [i % 2 == 0 for i in range(150)]
    groups = queue.writes.groups - before
    assert 3 <= groups < 10, groups  # 150 writes in a few transactions of at most 64
    for i, tid in enumerate(ids[:6]):
        task = await queue.get(tid)
        assert task is not None
        assert task.checkpoint == ({"i": i} if i % 2 == 0 else None)


async def test_each_tasks_writes_keep_their_order_across_groups_and_lanes(
    queue: TaskQueue,
) -> None:
    """500 writes at once, five per task in order: on PostgreSQL they go in lanes side by side
    (a task's writes all in one lane), on SQLite in one; every task ends with its last write,
    and no group ever runs a task's writes out of order."""
    ids = [await _submit(queue) for _ in range(100)]
    claimed = await queue.claim_many("o:", 100, lease_seconds=30, max_attempts=3)
    assert len(claimed) == 100
    assert queue.writes.lanes == (4 if queue.is_postgres else 1)
    before = queue.writes.groups
    writes = [queue.checkpoint(tid, f"o:{tid}", {"n": n}) for n in range(5) for tid in ids]
    assert await asyncio.gather(*writes) == [True] * 500
    assert queue.writes.groups - before >= 500 // 64  # grouped: no transaction per write
    for tid in ids:
        task = await queue.get(tid)
        assert task is not None and task.checkpoint == {"n": 4}


async def test_renewals_beside_grouped_writes_never_deadlock(queue: TaskQueue) -> None:
    """On PostgreSQL a lease renewal and a group of writes each lock many task rows: both lock
    them in task id order, so they never deadlock (a renewal that did failed, and a worker
    with ten thousand tasks lost their leases). Here every round renews all leases while the
    tasks' checkpoints and a progress flush arrive in the reverse order."""
    ids = [await _submit(queue) for _ in range(200)]
    claimed = await queue.claim_many("d:", 200, lease_seconds=30, max_attempts=3)
    assert len(claimed) == 200
    leases = [(tid, f"d:{tid}") for tid in ids]
    for round_ in range(5):
        writes = [queue.checkpoint(tid, f"d:{tid}", {"round": round_}) for tid in reversed(ids)]
        flush = queue.flush_progress({f"d:{tid}": (tid, round_ + 1) for tid in reversed(ids)})
        renewal = queue.heartbeat_many(list(reversed(leases)), lease_seconds=30)
        *written, flushed, owned = await asyncio.gather(*writes, flush, renewal)
        assert written == [True] * 200
        assert len(owned) == 200  # a row a group held is read, not renewed: still owned
        assert flushed <= {token for _, token in leases}
    # What a flush skipped (rows a group held, on PostgreSQL) goes at the next one.
    assert await queue.flush_progress({f"d:{tid}": (tid, 5) for tid in ids}) == {
        token for _, token in leases
    }
    task = await queue.get(ids[0])
    assert task is not None and task.checkpoint == {"round": 4} and task.progress == 5


async def test_a_renewal_and_a_progress_flush_never_wait_for_a_held_row(
    queue: TaskQueue,
) -> None:
    """On PostgreSQL another transaction holds one running task's row (as a group writing its
    checkpoint would): a lease renewal renews the others at once, counts the held one as still
    owned (a plain read) without renewing it, and a progress flush writes the others and leaves
    the held one out of its answer; once the row is free, both reach it. (SQLite has one writer
    at a time: nothing holds a row while they run.)"""
    ids = sorted([await _submit(queue) for _ in range(3)])
    assert len(await queue.claim_many("h:", 3, lease_seconds=30, max_attempts=3)) == 3
    leases = [(tid, f"h:{tid}") for tid in ids]
    tokens = {token for _, token in leases}
    progress = {f"h:{tid}": (tid, 50) for tid in ids}
    if not queue.is_postgres:
        assert set(await queue.heartbeat_many(leases, lease_seconds=60)) == tokens
        assert await queue.flush_progress(progress) == tokens
        return
    before = await queue.get(ids[1])
    assert before is not None
    async with queue.engine.connect() as holder:
        await holder.execute(sa.select(tasks.c.id).where(tasks.c.id == ids[1]).with_for_update())
        owned = await asyncio.wait_for(queue.heartbeat_many(leases, lease_seconds=60), 10)
        assert owned == {token: False for token in tokens}
        flushed = await asyncio.wait_for(queue.flush_progress(progress), 10)
        assert flushed == tokens - {f"h:{ids[1]}"}
        await holder.rollback()
    rows = {tid: await queue.get(tid) for tid in ids}
    held = rows[ids[1]]
    assert held is not None and held.lease_expires_at == before.lease_expires_at
    assert held.progress == 0
    for tid in (ids[0], ids[2]):
        row = rows[tid]
        assert row is not None and row.progress == 50
        assert (row.lease_expires_at or 0) > (before.lease_expires_at or 0) + 20
    assert await queue.heartbeat_many(leases, lease_seconds=60) == {t: False for t in tokens}
    assert await queue.flush_progress(progress) == tokens
    held = await queue.get(ids[1])
    assert held is not None and held.progress == 50
    assert (held.lease_expires_at or 0) > (before.lease_expires_at or 0) + 20


async def test_progress_flush_is_fenced_and_cancel_requests_are_one_read(
    queue: TaskQueue,
) -> None:
    ids = [await _submit(queue) for _ in range(4)]
    claimed = await queue.claim_many("p:", 4, lease_seconds=30, max_attempts=3)
    assert [t.id for t in claimed] == ids
    await queue.flush_progress(
        {f"p:{ids[0]}": (ids[0], 40), "p:stale": (ids[1], 50), f"p:{ids[2]}": (ids[2], 10)}
    )
    await queue.flush_progress({f"p:{ids[0]}": (ids[0], 20)})  # never lowered
    got = {tid: (await queue.get(tid)) for tid in ids}
    assert [got[t].progress for t in ids] == [40, 0, 10, 0]  # type: ignore[union-attr]
    assert await queue.cancel_requests() == set()
    assert (await queue.cancel(ids[1], "key_a"))[0] is CancelOutcome.REQUESTED
    assert (await queue.cancel(ids[3], "key_a"))[0] is CancelOutcome.REQUESTED
    assert await queue.cancel_requests() == {f"p:{ids[1]}", f"p:{ids[3]}"}
    assert await queue.mark_cancelled(ids[3], f"p:{ids[3]}")
    assert await queue.cancel_requests() == {f"p:{ids[1]}"}  # finished: out of the index
    # The read goes through the partial index of running tasks asked to cancel.
    async with queue.engine.connect() as conn:
        if queue.is_postgres:
            await conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(
                str(r[0])
                for r in await conn.exec_driver_sql(
                    "EXPLAIN SELECT lease_owner FROM tasks WHERE "
                    + CANCEL_REQUESTED
                    + " AND status = 'processing'"
                )
            )
        else:
            plan = "\n".join(
                str(r[-1])
                for r in await conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT lease_owner FROM tasks WHERE "
                    + CANCEL_REQUESTED
                    + " AND status = 'processing'"
                )
            )
    assert "ix_tasks_cancel_requested" in plan, plan


async def test_idempotency_window_and_conflict(queue: TaskQueue) -> None:
    async def submit(key: str, h: str) -> tuple[str, bool]:
        task, created = await queue.submit(
            task_id=task_id(),
            api_key_id="key_a",
            model="sandbox",
            provider="sandbox",
            spec={},
            estimated_time=1,
            idempotency_key=key,
            request_hash=h,
        )
        return task.id, created

    a, created = await submit("k1", "h1")
    assert created
    assert await submit("k1", "h1") == (a, False)
    with pytest.raises(IdempotencyConflict):
        await submit("k1", "h2")
    # concurrent first submissions with one key make one task
    results = await asyncio.gather(*(submit("k2", "h") for _ in range(5)))
    assert len({r[0] for r in results}) == 1
    assert sum(1 for r in results if r[1]) == 1


async def test_listing_and_queue_position(queue: TaskQueue) -> None:
    ids = [await _submit(queue) for _ in range(3)]
    other = await _submit(queue, key="key_b")
    listed = await queue.list_tasks("key_a", limit=10)
    assert [t.id for t in listed] == list(reversed(ids))
    assert [t.id for t in await queue.list_tasks("key_a", limit=10, after=ids[2])] == ids[1::-1]
    assert [t.id for t in await queue.list_tasks("key_b", limit=10)] == [other]
    third = await queue.get(ids[2])
    # Claims go round-robin over the keys: key_a's first, key_b's one, key_a's second, third.
    assert third is not None and await queue.queue_position(third) == 3
    assert time.time() - third.created_at < 60


_MIGRATE = """
import asyncio, sys
from reelserve.store.db import create_engine, upgrade

async def migrate() -> None:
    engine = create_engine(sys.argv[1])
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()

asyncio.run(migrate())
"""


def test_concurrent_migrations_of_one_database_all_succeed(db_url: str) -> None:
    """A server and its workers started together all migrate a fresh database: one applies the
    migrations while the others wait for its lock, then find nothing left to do."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, db_url], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 3, errors

    async def revision() -> str | None:
        engine = create_engine(db_url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(revision()) == head_revision()


async def test_views_read_what_a_view_needs(queue: TaskQueue) -> None:
    """A status poll is one read of the view's columns with the queue position; the batch read
    of the event streams has no position; neither carries the spec."""
    first, second = await _submit(queue), await _submit(queue)
    other = await _submit(queue, key="key_b")
    view = await queue.view(second, "key_a")
    assert isinstance(view, TaskView)
    # Fair order (round-robin over keys): key_a's first, key_b's one, then key_a's second.
    assert view.id == second and view.status is TaskStatus.PENDING and view.queue_position == 2
    assert await queue.view(second, "key_b") is None  # another key's task is not found
    assert await queue.view("task_missing", "key_a") is None
    other_view = await queue.view(other, "key_b")
    assert other_view is not None and other_view.queue_position == 1  # one round: key_a's first

    claimed = await queue.claim("w", lease_seconds=30, max_attempts=3)
    assert claimed is not None and claimed.id == first
    assert await queue.heartbeat(first, "w", lease_seconds=30, progress=30) == (True, False)
    running = await queue.view(first, "key_a")
    assert running is not None and running.queue_position is None and running.progress == 30
    waiting = await queue.view(second, "key_a")
    # key_a was just served: key_b's task, never served, goes before key_a's next.
    assert waiting is not None and waiting.queue_position == 1
    assert await queue.queue_position(waiting) == 1

    result = TaskResult(videos=(), expires_at=int(time.time()) + 60)
    assert await queue.complete(first, "w", result)
    done = await queue.view(first, "key_a")
    assert done is not None and done.status is TaskStatus.COMPLETED and done.result == result
    record = await queue.get(first)
    assert record is not None and record.view() == done  # a whole row's view is the same

    batch = await queue.views([first, second, other, "task_missing"])
    assert set(batch) == {first, second, other}
    assert batch[first] == done and batch[second].queue_position is None
    assert await queue.views([]) == {}


async def test_newest_lists_every_key(queue: TaskQueue) -> None:
    a, b = await _submit(queue), await _submit(queue, key="key_b")
    assert [t.id for t in await queue.newest()] == [b, a]
    assert [t.id for t in await queue.newest(limit=1)] == [b]
    assert await queue.claim("w", lease_seconds=30, max_attempts=3) is not None
    assert [t.id for t in await queue.newest(status="processing")] == [a]
    assert [t.id for t in await queue.newest(status="pending")] == [b]


async def test_stats_count_by_model_and_status(queue: TaskQueue) -> None:
    a = await _submit(queue)
    await _submit(queue)
    pending = await queue.get(a)
    assert await queue.claim("w", lease_seconds=30, max_attempts=3) is not None
    stats = await queue.stats()
    assert stats.counts == {("sandbox", "processing"): 1, ("sandbox", "pending"): 1}
    assert pending is not None and stats.oldest_pending["sandbox"] > pending.created_at


async def test_a_completion_settles_at_the_cost_its_usage_row_reports(queue: TaskQueue) -> None:
    """The usage row written with the completion (`complete(also=...)`) is what the settle
    charges: a reserved 0.8 (the list price, the worst case over the backends) settles at the
    provider's 0.3, not at the list price."""
    import sqlalchemy as sa

    from reelserve.store.ledger import Reservation
    from reelserve.store.tables import ledger
    from reelserve.store.usage import UsageRecord, UsageStore

    tid = task_id()
    await queue.submit(
        task_id=tid,
        api_key_id="key_a",
        model="veo",
        provider="google_veo",
        spec={"prompt": "x"},
        estimated_time=5,
        reservation=Reservation(amount=0.8, currency="USD", model="veo", samples=2, test=False),
    )
    claimed = await queue.claim("w1", lease_seconds=30, max_attempts=3)
    assert claimed is not None and claimed.id == tid
    row = UsageRecord(
        task_id=tid,
        api_key_id="key_a",
        model="veo",
        provider="google_veo",
        videos=2,
        video_seconds=8.0,
        has_audio=False,
        cost=0.3,
        currency="USD",
        credential="vertex:p",
    )
    videos = tuple(
        StoredVideo(
            video_key=f"{tid}/{i}.mp4",
            thumbnail_key=f"{tid}/{i}.jpg",
            duration=4.0,
            width=1280,
            height=720,
            fps=24.0,
            has_audio=False,
            seed=None,
            person_generation=None,
            size_bytes=1000,
        )
        for i in range(2)
    )
    result = TaskResult(videos=videos, expires_at=0)
    assert await queue.complete(tid, "w1", result, also=[UsageStore(queue.engine).insert(row)])
    async with queue.engine.connect() as conn:
        found = (
            await conn.execute(
                sa.select(ledger.c.kind, ledger.c.charge)
                .where(ledger.c.task_id == tid)
                .order_by(ledger.c.id)
            )
        ).all()
    assert [(kind, round(charge, 6)) for kind, charge in found] == [
        ("reserve", 0.0),
        ("settle", 0.3),
    ]


async def test_keys_are_found_by_their_secret_on_the_stores_reader(queue: TaskQueue) -> None:
    """Every request looks its key up by the hash of its secret, on the store's reader (inline
    on SQLite, a plain asyncpg pool on PostgreSQL): limits, the JSON list of models and the
    admin flag come back as the engine stores them, and a revoked key is not found."""
    assert queue.reader is not None
    keys = KeyStore(queue.engine, queue.reader)
    limited, secret = await keys.create(
        "live", "k", limits=KeyLimits(max_running=2, budget=1.5, models=("veo-3.1", "sandbox"))
    )
    admin, admin_secret = await keys.create("live", "ops", admin=True)
    found = await keys.authenticate(secret)
    assert found == limited and found.limits.models == ("veo-3.1", "sandbox")
    assert await keys.authenticate(admin_secret) == admin and admin.admin
    plain, plain_secret = await keys.create("test")
    assert (await keys.authenticate(plain_secret)) == plain and plain.limits.models is None
    assert await keys.authenticate(secret + "x") is None
    assert await keys.revoke(limited.id) is not None
    assert await keys.authenticate(secret) is None


async def test_postgres_reads_survive_a_dropped_connection_and_go_through_the_engine_without_a_pool(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: a reader cancelled while the pool is being made leaves it to the next; a
    status poll on the reader's pool whose connection the server dropped is tried again on a
    new one; a reader that cannot connect (a URL option only SQLAlchemy knows)
    says so and reads through the engine."""
    if not db_url.startswith("postgresql"):
        return
    engine = create_engine(db_url)
    await upgrade(engine)
    queue = TaskQueue(engine)
    assert isinstance(queue.reader, PostgresReader)
    try:
        tid = await _submit(queue)
        first = asyncio.ensure_future(queue.view(tid, "key_a"))
        await asyncio.sleep(0)
        first.cancel()  # the first reader gives up while the pool is being made
        view = await asyncio.wait_for(queue.view(tid, "key_a"), 10)
        assert view is not None and view.queue_position == 0
        async with engine.connect() as conn:
            dropped = (
                await conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar_one()
        assert dropped >= 1
        assert await queue.view(tid, "key_a") == view
    finally:
        queue.close()
        await engine.dispose()
    odd = create_engine(f"{db_url}?prepared_statement_cache_size=50")
    fallback = TaskQueue(odd)
    try:
        with caplog.at_level("WARNING", logger="reelserve.store"):
            assert await fallback.view(tid, "key_a") == view
            assert await fallback.view(tid, "key_b") is None
        assert "status reads go through the engine" in caplog.text
    finally:
        fallback.close()
        await odd.dispose()


async def test_postgres_reader_tries_its_pool_again_after_the_server_could_not_be_reached(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: a reader whose database is not there at its first read fails that read (as
    the engine does) and says why once, however often it tries again. Once the database is
    there and the retry interval has passed, reads go through the pool again (no engine
    checkouts), and the log says so."""
    if not db_url.startswith("postgresql"):
        return
    later = f"{db_url.rsplit('/', 1)[1]}_later"
    engine = create_engine(f"{db_url.rsplit('/', 1)[0]}/{later}")
    checkouts: list[object] = []
    sa.event.listen(engine.sync_engine, "checkout", lambda *_: checkouts.append(None))
    reader = PostgresReader(engine, retry_seconds=0.3)
    keys = KeyStore(engine, reader)
    try:
        with caplog.at_level("INFO", logger="reelserve.store"):
            for _ in range(2):
                with pytest.raises(sa.exc.DBAPIError, match=later):
                    await keys.authenticate("rs_test_x")
                await asyncio.sleep(0.4)  # past the retry interval: the pool is tried again
            warnings = [r for r in caplog.records if "could not connect" in r.getMessage()]
            assert len(warnings) == 1 and later in warnings[0].getMessage()
            await admin_sql(f'CREATE DATABASE "{later}"')
            await upgrade(engine)
            key, secret = await keys.create("test")
            await asyncio.sleep(0.4)
            before = len(checkouts)
            for _ in range(3):
                assert await keys.authenticate(secret) == key
            assert len(checkouts) == before  # all three on the pool, none on the engine
        assert "the read pool connected" in caplog.text
    finally:
        reader.close()
        await engine.dispose()
        await admin_sql(f'DROP DATABASE IF EXISTS "{later}" WITH (FORCE)')
