"""Turns at SQLite's write lock within one process (store/db.py, issue 11 point 4): a client's
write goes before the worker's background writes that wait with it, each line first come first
served, a writer that gives up while waiting passes its turn on, and a group commit holding the
lock lets a waiting client go first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reelserve.store.db import WriteTurns, background_writes, begin_write, create_engine
from reelserve.store.groups import WriteGroups


async def test_a_client_write_goes_before_waiting_background_writes() -> None:
    turns = WriteTurns()
    order: list[str] = []

    async def write(name: str, background: bool) -> None:
        await turns.acquire(background)
        order.append(name)
        await asyncio.sleep(0.01)
        turns.release()

    await turns.acquire(True)  # a background write holds the lock
    jobs = [asyncio.create_task(write(f"bg{i}", True)) for i in range(3)]
    await asyncio.sleep(0)
    jobs.append(asyncio.create_task(write("client1", False)))
    await asyncio.sleep(0)
    jobs.append(asyncio.create_task(write("client2", False)))
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*jobs)
    assert order == ["client1", "client2", "bg0", "bg1", "bg2"]
    assert not turns.held


async def test_a_writer_that_gives_up_passes_its_turn_on() -> None:
    turns = WriteTurns()
    await turns.acquire(False)
    quitter = asyncio.create_task(turns.acquire(True))
    waiter = asyncio.create_task(turns.acquire(True))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    turns.release()
    await asyncio.wait_for(waiter, 5)  # the turn skipped the writer that left
    turns.release()
    assert not turns.held


async def test_background_writes_wait_behind_client_writes_on_a_real_database(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (who TEXT)"))
    order: list[str] = []
    first_written = asyncio.Event()

    async def write(who: str) -> None:
        async with begin_write(engine) as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (:w)"), {"w": who})
            order.append(who)
            first_written.set()

    async def worker() -> None:
        background_writes()  # as a worker does at its start; tasks it starts inherit it
        await asyncio.gather(*(write(f"worker{i}") for i in range(20)))

    background = asyncio.create_task(worker())
    await first_written.wait()  # the worker's burst is queued behind its first write
    await write("client")
    await background
    assert order.index("client") <= 2, order  # next (or next but one), not behind the burst
    async with engine.connect() as conn:
        count = (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
    assert count == 21
    await engine.dispose()


async def test_a_group_commit_lets_a_waiting_client_write_go_first(tmp_path: Path) -> None:
    """A group of background writes (store/groups.py) holding the lock commits what it has
    done as soon as a client's write waits, and runs the rest after it: a submit waits for one
    write of the group, not for all 64 of them."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT)")
        )
    groups = WriteGroups(engine)
    started = asyncio.Event()

    def insert(who: str) -> Callable[[AsyncConnection], Awaitable[int]]:
        async def write(conn: AsyncConnection) -> int:
            started.set()
            await conn.execute(sa.text("INSERT INTO t (who) VALUES (:w)"), {"w": who})
            await asyncio.sleep(0.01)  # a write that takes a while (a busy event loop)
            return 1

        return write

    async def worker() -> list[int]:
        background_writes()
        return await asyncio.gather(*(groups.run(insert(f"bg{i}")) for i in range(40)))

    background = asyncio.create_task(worker())
    await started.wait()  # the first group holds the lock
    async with begin_write(engine) as conn:
        await conn.execute(sa.text("INSERT INTO t (who) VALUES ('client')"))
    assert await background == [1] * 40  # every write ran, each with its own result
    async with engine.connect() as conn:
        order = [w for (w,) in await conn.execute(sa.text("SELECT who FROM t ORDER BY n"))]
    assert len(order) == 41
    assert order.index("client") <= 2, order  # after the write in progress, not after 40
    assert groups.groups >= 2  # the group was cut short and the rest ran as a second one
    await engine.dispose()
