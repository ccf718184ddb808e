"""Fair claims across keys, on SQLite and PostgreSQL, at the store: round-robin over the keys
with runnable work (least recently served first, each key's tasks oldest first), batch claims
that interleave keys, a key's max_running kept across concurrent claimers, resumed tasks taken
first within their key, queue positions that count in the claim's own order, and indexed plans.

The acceptance over real HTTP with a real worker is in test_fair_workers.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import task_id
from reelserve.domain.limits import KeyLimits
from reelserve.domain.result import TaskResult
from reelserve.store.db import create_engine, upgrade
from reelserve.store.keys import KeyStore
from reelserve.store.queue import TaskQueue
from reelserve.store.tables import tasks
from reelserve.store.task_claims import claim_statements
from reelserve.store.task_reads import position_of
from tests.databases import database_url

NO_VIDEOS = TaskResult(videos=(), expires_at=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture()
async def queue(db_url: str) -> AsyncIterator[TaskQueue]:
    engine: AsyncEngine = create_engine(db_url)
    await upgrade(engine)
    q = TaskQueue(engine)
    yield q
    q.close()
    await engine.dispose()


async def _submit(queue: TaskQueue, key: str, n: int = 1, provider: str = "sandbox") -> list[str]:
    ids = []
    for _ in range(n):
        tid = task_id()
        await queue.submit(
            task_id=tid,
            api_key_id=key,
            model="sandbox",
            provider=provider,
            spec={"prompt": "x"},
            estimated_time=5,
        )
        ids.append(tid)
    return ids


async def _limited_key(queue: TaskQueue, max_running: int) -> str:
    key, _ = await KeyStore(queue.engine).create("test", limits=KeyLimits(max_running=max_running))
    return key.id


async def _processing(queue: TaskQueue, key: str) -> int:
    async with queue.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(
            tasks.c.api_key_id == key,
            tasks.c.status == "processing",
            tasks.c.lease_expires_at >= time.time(),
        )
        return int((await conn.execute(query)).scalar_one())


async def test_one_claim_at_a_time_goes_round_robin(queue: TaskQueue) -> None:
    a = await _submit(queue, "key_a", 4)
    b = await _submit(queue, "key_b", 2)
    c = await _submit(queue, "key_c", 1)
    got = []
    while (task := await queue.claim(f"w{len(got)}", lease_seconds=30, max_attempts=3)) is not None:
        got.append(task.id)
    assert got == [a[0], b[0], c[0], a[1], b[1], a[2], a[3]]


async def test_a_batch_interleaves_keys_and_the_next_batch_goes_on(queue: TaskQueue) -> None:
    a = await _submit(queue, "key_a", 6)
    b = await _submit(queue, "key_b", 6)
    c = await _submit(queue, "key_c", 1)
    first = await queue.claim_many("w:1:", 5, lease_seconds=30, max_attempts=3)
    assert [t.id for t in first] == [a[0], b[0], c[0], a[1], b[1]]
    assert [t.lease_owner for t in first] == [f"w:1:{t.id}" for t in first]
    # key_a's last task in that batch came before key_b's: key_a goes first again.
    second = await queue.claim_many("w:2:", 4, lease_seconds=30, max_attempts=3)
    assert [t.id for t in second] == [a[2], b[2], a[3], b[3]]


async def test_a_burst_delays_another_keys_task_by_one_task(queue: TaskQueue) -> None:
    """key_a queues 300, then key_b queues one: with one slot freeing at a time, key_b's task is
    the second claimed; in a batch of 50 it is the second of the batch."""
    await _submit(queue, "key_a", 300)
    (lone,) = await _submit(queue, "key_b")
    position = await queue.view(lone, "key_b")
    assert position is not None and position.queue_position == 1
    first = await queue.claim("w1", lease_seconds=30, max_attempts=3)
    second = await queue.claim("w2", lease_seconds=30, max_attempts=3)
    assert first is not None and first.api_key_id == "key_a"
    assert second is not None and second.id == lone
    (late,) = await _submit(queue, "key_c")
    batch = await queue.claim_many("w3:", 50, lease_seconds=30, max_attempts=3)
    assert [t.id for t in batch].index(late) == 0  # key_c was never served; key_a just was
    assert sum(1 for t in batch if t.api_key_id == "key_a") == 49


async def test_queue_positions_are_the_claim_order(queue: TaskQueue) -> None:
    """Every pending task's queue position is the number of tasks claimed before it, one slot
    at a time, from a mixed queue, also after some keys were served."""
    rng = random.Random(15)
    keys = [f"key_{n}" for n in range(5)]
    for _ in range(40):
        await _submit(queue, rng.choice(keys))
    for _ in range(3):  # some keys served already, in some order
        await queue.claim("warm", lease_seconds=30, max_attempts=3)
    async with queue.engine.connect() as conn:
        pending = (
            await conn.execute(
                sa.select(tasks.c.id, tasks.c.api_key_id).where(tasks.c.status == "pending")
            )
        ).all()
    positions = {}
    for tid, key in pending:
        view = await queue.view(tid, key)
        assert view is not None and view.queue_position is not None
        record = await queue.get(tid)
        assert record is not None and await queue.queue_position(record) == view.queue_position
        positions[tid] = view.queue_position
    assert sorted(positions.values()) == list(range(len(pending)))
    order = []
    while (task := await queue.claim("w", lease_seconds=30, max_attempts=3)) is not None:
        order.append(task.id)
    assert {tid: n for n, tid in enumerate(order)} == positions


async def test_max_running_keeps_the_rest_pending(queue: TaskQueue) -> None:
    limited = await _limited_key(queue, 2)
    mine = await _submit(queue, limited, 5)
    other = await _submit(queue, "key_free", 5)
    batch = await queue.claim_many("w:", 50, lease_seconds=30, max_attempts=3)
    assert sorted(t.id for t in batch) == sorted(mine[:2] + other)
    assert await queue.claim_many("w2:", 50, lease_seconds=30, max_attempts=3) == []
    view = await queue.view(mine[2], limited)
    assert view is not None and view.status.value == "pending"  # waits, does not fail
    assert await queue.complete(mine[0], f"w:{mine[0]}", NO_VIDEOS)
    again = await queue.claim_many("w3:", 50, lease_seconds=30, max_attempts=3)
    assert [t.id for t in again] == [mine[2]]
    # A lease that expired frees its place too; the task is resumed first, within the limit.
    async with queue.engine.begin() as conn:
        await conn.execute(
            tasks.update().where(tasks.c.id == mine[1]).values(lease_expires_at=time.time() - 1)
        )
    resumed = await queue.claim_many("w4:", 50, lease_seconds=30, max_attempts=3)
    assert [(t.id, t.attempts) for t in resumed] == [(mine[1], 2)]
    assert await _processing(queue, limited) == 2


async def test_resumed_tasks_come_first_within_their_key(queue: TaskQueue) -> None:
    a = await _submit(queue, "key_a", 3)
    assert (await queue.claim("dead", lease_seconds=0.2, max_attempts=3)) is not None
    await asyncio.sleep(0.3)
    late = await _submit(queue, "key_a", 1)
    got = await queue.claim_many("w:", 2, lease_seconds=30, max_attempts=3)
    assert [(t.id, t.attempts) for t in got] == [(a[0], 2), (a[1], 1)]
    assert late  # still pending behind them


async def test_filters_choose_among_the_keys_with_matching_work(queue: TaskQueue) -> None:
    veo = await _submit(queue, "key_a", 2, provider="google_veo")
    sandbox = await _submit(queue, "key_b", 2)
    got = await queue.claim_many("w:", 10, lease_seconds=30, max_attempts=3, providers={"sandbox"})
    assert [t.id for t in got] == sandbox
    assert await queue.claim_many("m:", 10, lease_seconds=30, max_attempts=3, models={"x"}) == []
    rest = await queue.claim_many("v:", 10, lease_seconds=30, max_attempts=3)
    assert [t.id for t in rest] == veo


async def test_concurrent_claimers_never_share_and_keep_max_running(queue: TaskQueue) -> None:
    """Four claim loops at once, each finishing what it took after a moment, over a limited
    key (max 2) and two free keys: no task is taken twice, all are taken, and no sample of the
    database ever sees more than 2 of the limited key's tasks processing."""
    limited = await _limited_key(queue, 2)
    ids = set(await _submit(queue, limited, 12))
    ids |= set(await _submit(queue, "key_b", 30)) | set(await _submit(queue, "key_c", 30))
    taken: list[str] = []
    most = 0
    done = asyncio.Event()

    async def claimer(n: int) -> None:
        idle = 0
        while idle < 20:
            batch = await queue.claim_many(f"w{n}:", 7, lease_seconds=30, max_attempts=3)
            taken.extend(t.id for t in batch)
            idle = 0 if batch else idle + 1
            await asyncio.sleep(0.01)
            for t in batch:
                assert await queue.complete(t.id, f"w{n}:{t.id}", NO_VIDEOS)

    async def sampler() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, await _processing(queue, limited))
            await asyncio.sleep(0.002)

    watching = asyncio.create_task(sampler())
    await asyncio.gather(*(claimer(n) for n in range(4)))
    done.set()
    await watching
    assert len(taken) == len(set(taken)) == len(ids)
    assert set(taken) == ids
    assert 1 <= most <= 2, most


def _plan_text(rows: list[sa.Row[object]]) -> str:
    return " ".join(str(row) for row in rows)


async def test_the_claim_and_the_position_read_the_index(queue: TaskQueue) -> None:
    """EXPLAIN on both engines: the keys to serve, one key's queue and the status poll's
    position read `ix_tasks_key_queue`; nothing scans the whole tasks table."""
    await _submit(queue, "key_a", 3)
    await _submit(queue, "key_b", 1)
    now = time.time()
    await queue.claim_many("w:", 1, lease_seconds=30, max_attempts=3)  # queue_keys has rows
    sql = claim_statements(queue.engine.dialect.name, True, False, True)
    params = {"now": now, "max_attempts": 3, "providers": ["sandbox"], "keys": ["key_a", "key_b"]}
    statements: list[sa.ClauseElement] = [
        sql.keys.params(**params, limit=50),
        sql.queues.params(**params, limit=10),
        sa.select(position_of(sa.literal("key_a"), sa.literal(now), sa.literal("task_x"))),
    ]
    postgres = queue.is_postgres
    async with queue.engine.connect() as conn:
        if postgres:
            await conn.execute(sa.text("SET enable_seqscan = off"))
        for statement in statements:
            compiled = statement.compile(
                dialect=queue.engine.dialect, compile_kwargs={"literal_binds": True}
            )
            explain = "EXPLAIN" if postgres else "EXPLAIN QUERY PLAN"
            plan = _plan_text(list((await conn.execute(sa.text(f"{explain} {compiled}"))).all()))
            assert "ix_tasks_key_queue" in plan, plan
            if postgres:
                assert "Seq Scan on tasks" not in plan, plan
            else:
                assert "SCAN tasks" not in plan and "SCAN p " not in plan, plan
