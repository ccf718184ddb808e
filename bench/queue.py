"""Queue figures: submit-to-claim latency and claims per second, SQLite and PostgreSQL, 1-4
workers; and the fair claim against the old oldest-first one, side by side.

    python -m bench.queue [--latency-tasks 60] [--throughput-tasks 400] [--workers 1,2,4]
                          [--claims-only | --no-claims] [--claim-tasks 20000]

Each worker is a real `reelserve` worker process (the production `Worker` loop) whose only
provider does nothing, so the figures are the queue's own: claiming, leasing, heartbeats and
completion. Times come from the task rows themselves (`started_at - created_at` is the
submit-to-claim latency). With PostgreSQL, workers are woken by LISTEN/NOTIFY; with SQLite,
workers of other processes find new tasks by polling (`poll_interval`, 0.5 s by default), which
is what the latency column shows. PostgreSQL tests need the server on 127.0.0.1:5432.

The claim section runs at the store, in this process, on one queue of `--claim-tasks` pending
tasks spread over 1 key, 10 keys and 1,000 keys (random keys, random order): the time of one
`claim_many` of 50 (the worker's batch) and of one claim of 1, with 1 claimer and with 4
claimers at once (PostgreSQL: its row locks; SQLite: one writer), the fair claim
(store/task_claims.py) beside the old one (one statement, oldest first across every key,
reproduced here as the baseline); the status poll's queue position, old count and fair count;
and the fairness figure: key A queues a burst of 1,000, then key B queues one; how many tasks
are claimed before B's, one slot at a time and in batches of 50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reelserve.providers.base import ProviderBase

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


class NoopProvider(ProviderBase):
    name = "bench"

    async def run(self, spec: Any, ctx: Any) -> list[Any]:
        return []


async def _worker_main(url: str, data_dir: str) -> None:
    from reelserve.core import Reelserve
    from reelserve.settings import Settings
    from reelserve.worker.runner import Worker

    settings = Settings(data_dir=Path(data_dir), database_url=url, secret_key="bench")
    service = await Reelserve.open(settings, migrate=False)
    service.providers["bench"] = NoopProvider()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await Worker(service.worker_parts(), providers={"bench"}, concurrency=4).run(stop)
    finally:
        await service.close()


def _spec() -> dict[str, Any]:
    from reelserve.domain.models import default_models
    from reelserve.domain.spec import parse_generation_request

    models = {m.id: m for m in default_models()}
    body = {"model": "sandbox", "prompt": "x", "duration": 1}
    return parse_generation_request(body, models).model_dump(mode="json")


async def _prepare(url: str) -> None:
    from reelserve.store.db import create_engine, upgrade

    engine = create_engine(url)
    await upgrade(engine)
    await engine.dispose()


async def _submit(url: str, count: int, spacing: float) -> None:
    from reelserve.domain.ids import task_id
    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskQueue

    engine = create_engine(url)
    queue = TaskQueue(engine)
    for _ in range(count):
        await queue.submit(
            task_id=task_id(),
            api_key_id="key_bench",
            model="bench",
            provider="bench",
            spec=_spec(),
            estimated_time=1,
        )
        if spacing:
            await asyncio.sleep(spacing)
    queue.close()
    await engine.dispose()


async def _rows(url: str) -> list[tuple[str, float, float | None, float | None]]:
    from reelserve.store.db import create_engine

    engine = create_engine(url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text("SELECT status, created_at, started_at, finished_at FROM tasks")
            )
        ).all()
    await engine.dispose()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def _wait_done(url: str, total: int, limit: float) -> list[Any]:
    deadline = time.monotonic() + limit
    while True:
        rows = await _rows(url)
        done = [r for r in rows if r[0] == "completed"]
        if len(done) >= total or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def _start_workers(url: str, n: int, data_dir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for _ in range(n):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.queue", "--worker", url, str(data_dir)],
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _fresh_url(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / f'q-{secrets.token_hex(3)}.db'}"
    name = f"reelserve_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def _drop(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def measure(kind: str, workers: int, latency_tasks: int, throughput_tasks: int, tmp: Path) -> str:
    # Latency: idle workers, tasks submitted one by one, 50 ms apart.
    url = _fresh_url(kind, tmp)
    try:
        asyncio.run(_prepare(url))
        procs = _start_workers(url, workers, tmp)
        time.sleep(3)  # let the workers connect and go idle
        asyncio.run(_submit(url, latency_tasks, 0.05))
        rows = asyncio.run(_wait_done(url, latency_tasks, 120))
        _stop(procs)
        waits = sorted((r[2] - r[1]) * 1000 for r in rows if r[2] is not None)
        p50 = statistics.median(waits)
        p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    finally:
        _drop(url)
    # Throughput: a backlog, then the workers drain it.
    url = _fresh_url(kind, tmp)
    try:
        asyncio.run(_prepare(url))
        asyncio.run(_submit(url, throughput_tasks, 0))
        procs = _start_workers(url, workers, tmp)
        rows = asyncio.run(_wait_done(url, throughput_tasks, 300))
        _stop(procs)
        done = [r for r in rows if r[0] == "completed"]
        span = max(r[3] for r in done) - min(r[2] for r in done)
        rate = len(done) / span if span > 0 else float("nan")
    finally:
        _drop(url)
    return (
        f"{kind:<10} workers={workers}  submit->claim p50 {p50:7.1f} ms  p99 {p99:7.1f} ms   "
        f"drain {rate:7.1f} tasks/s ({len(done)}/{throughput_tasks})"
    )


# -- the claim, fair against the old order ---------------------------------------------------


async def _fill(url: str, keys: list[str]) -> None:
    """Queue one pending task per entry of `keys` (that key's), in that order, in bulk."""
    import dataclasses

    from reelserve.domain.ids import task_id
    from reelserve.store.db import begin_write, create_engine
    from reelserve.store.tables import tasks
    from reelserve.store.task_rows import TaskRecord

    engine = create_engine(url)
    spec = _spec()
    base = time.time() - len(keys) * 1e-4
    rows = []
    for n, key in enumerate(keys):
        record = TaskRecord.queued(
            task_id=task_id(),
            api_key_id=key,
            model="bench",
            provider="bench",
            spec=spec,
            estimated_time=1,
            idempotency_key=None,
            request_hash=None,
        )
        rows.append(dataclasses.replace(record, created_at=base + n * 1e-4))
    for start in range(0, len(rows), 500):
        async with begin_write(engine) as conn:
            chunk = [dataclasses.asdict(r) for r in rows[start : start + 500]]
            await conn.execute(tasks.insert(), chunk)
    async with engine.connect() as conn:  # as autovacuum / a running server would have it
        await conn.execute(sa.text("ANALYZE"))
        await conn.commit()
    await engine.dispose()


async def _old_claim(engine: Any, prefix: str, limit: int) -> list[str]:
    """The claim as it was before fair queuing: one UPDATE of the `limit` oldest runnable
    tasks of every key (a materialised CTE, FOR UPDATE SKIP LOCKED)."""
    from reelserve.store.db import begin_write
    from reelserve.store.tables import tasks

    now = time.time()
    runnable = sa.or_(
        tasks.c.status == "pending",
        sa.and_(
            tasks.c.status == "processing", tasks.c.lease_expires_at < now, tasks.c.attempts < 3
        ),
    )
    pick = (
        sa.select(tasks.c.id)
        .where(runnable, tasks.c.provider.in_(["bench"]))
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(limit)
    )
    picked = pick.with_for_update(skip_locked=True).cte("picked")
    if engine.dialect.name == "postgresql":
        picked = picked.prefix_with("MATERIALIZED")
    stmt = (
        tasks.update()
        .where(tasks.c.id.in_(sa.select(picked.c.id)), runnable)
        .values(
            status="processing",
            lease_owner=sa.literal(prefix, sa.String) + tasks.c.id,
            lease_expires_at=now + 60,
            attempts=tasks.c.attempts + 1,
            started_at=sa.func.coalesce(tasks.c.started_at, now),
            updated_at=now,
        )
        .returning(tasks.c.id, tasks.c.created_at)
    )
    async with begin_write(engine) as conn:
        rows = (await conn.execute(stmt)).all()
    return [str(r[0]) for r in sorted(rows, key=lambda r: (r[1], r[0]))]


async def _new_claim(queue: Any, prefix: str, limit: int) -> list[str]:
    claimed = await queue.claim_many(
        prefix, limit, lease_seconds=60, max_attempts=3, providers={"bench"}
    )
    return [t.id for t in claimed]


def _old_poll() -> sa.Select[Any]:
    """The status poll as it was before fair queuing: the view's columns and the count of the
    pending tasks older than this one, of every key."""
    from reelserve.store.tables import tasks
    from reelserve.store.task_rows import VIEW_COLUMNS

    t, p = tasks.alias("t"), tasks.alias("p")
    ahead = (
        sa.select(sa.func.count())
        .select_from(p)
        .where(
            p.c.status == "pending",
            p.c.created_at <= t.c.created_at,
            sa.or_(p.c.created_at < t.c.created_at, p.c.id < t.c.id),
        )
        .scalar_subquery()
    )
    return sa.select(
        *[t.c[name] for name in VIEW_COLUMNS],
        sa.case((t.c.status == "pending", ahead)).label("queue_position"),
    ).where(t.c.id == sa.bindparam("task_id"), t.c.api_key_id == sa.bindparam("api_key_id"))


async def _old_position(queue: Any, task: Any) -> int:
    """One old status poll, on the same path as the fair one (the store's reader)."""
    from reelserve.store.reads import PointRead

    params = {"task_id": task.id, "api_key_id": task.api_key_id}
    if queue.reader is not None:
        rows = await queue.reader.fetch(PointRead(_old_poll()), **params)
        return int(rows[0][-1])
    async with queue.engine.connect() as conn:
        return int((await conn.execute(_old_poll(), params)).first()[-1])


async def _claim_figures(url: str, fair: bool, rounds: int) -> dict[str, float]:
    """Median ms per claim of 50 and of 1, with 1 and 4 claimers, on a filled queue; and the
    median status-poll position read in us."""
    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskQueue

    engine = create_engine(url)
    queue = TaskQueue(engine)

    async def one(prefix: str, limit: int) -> list[str]:
        if fair:
            return await _new_claim(queue, prefix, limit)
        return await _old_claim(engine, prefix, limit)

    out: dict[str, float] = {}
    for label, limit, claimers in (("50x1", 50, 1), ("1x1", 1, 1), ("50x4", 50, 4)):
        times: list[float] = []

        async def loop(n: int, limit: int = limit, times: list[float] = times) -> None:
            for r in range(rounds):
                start = time.perf_counter()
                got = await one(f"b{n}:{r}:", limit)
                times.append(time.perf_counter() - start)
                assert got, "the queue ran dry: raise --claim-tasks"

        await asyncio.gather(*(loop(n) for n in range(claimers)))
        out[label] = statistics.median(times) * 1000
    pending = await queue.newest(status="pending", limit=2000)
    sample = pending[:: max(1, len(pending) // 50)]
    await queue.view(sample[0].id, sample[0].api_key_id)  # the reader's connection opens
    times = []
    for task in sample:
        start = time.perf_counter()
        if fair:
            view = await queue.view(task.id, task.api_key_id)
            assert view is not None and view.queue_position is not None
        else:
            await _old_position(queue, task)
        times.append(time.perf_counter() - start)
    out["position"] = statistics.median(times) * 1e6
    queue.close()
    await engine.dispose()
    return out


async def _fairness(url: str, fair: bool, batch: int) -> int:
    """Key A queues 1,000, then key B one: the tasks claimed before B's."""
    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskQueue

    await _fill(url, ["key_A"] * 1000 + ["key_B"])
    engine = create_engine(url)
    queue = TaskQueue(engine)
    async with engine.connect() as conn:
        lone = (
            await conn.execute(sa.text("SELECT id FROM tasks WHERE api_key_id = 'key_B'"))
        ).scalar_one()
    before = 0
    try:
        for r in range(2000):
            got = await (
                _new_claim(queue, f"f{r}:", batch) if fair else _old_claim(engine, f"f{r}:", batch)
            )
            if lone in got:
                return before + got.index(lone)
            before += len(got)
        raise AssertionError("B's task was never claimed")
    finally:
        queue.close()
        await engine.dispose()


def measure_claims(kind: str, total: int, tmp: Path) -> list[str]:
    import random

    lines = []
    rng = random.Random(15)
    rounds = 10
    for keys in (1, 10, 1000):
        names = [f"key_{n:04d}" for n in range(keys)]
        order = [rng.choice(names) for _ in range(total)]
        figures = {}
        for fair in (False, True):
            url = _fresh_url(kind, tmp)
            try:
                asyncio.run(_prepare(url))
                asyncio.run(_fill(url, order))
                figures[fair] = asyncio.run(_claim_figures(url, fair, rounds))
            finally:
                _drop(url)
        for label, what in (
            ("50x1", "claim of 50, 1 claimer "),
            ("1x1", "claim of 1, 1 claimer  "),
            ("50x4", "claim of 50, 4 claimers"),
        ):
            old, new = figures[False][label], figures[True][label]
            lines.append(
                f"{kind:<10} {total} pending / {keys:>4} keys  {what}  old {old:7.2f} ms   "
                f"fair {new:7.2f} ms"
            )
        old, new = figures[False]["position"], figures[True]["position"]
        lines.append(
            f"{kind:<10} {total} pending / {keys:>4} keys  status poll's queue position  "
            f"old {old:7.1f} us   fair {new:7.1f} us (the whole poll)"
        )
    for batch in (1, 50):
        ahead = {}
        for fair in (False, True):
            url = _fresh_url(kind, tmp)
            try:
                asyncio.run(_prepare(url))
                ahead[fair] = asyncio.run(_fairness(url, fair, batch))
            finally:
                _drop(url)
        lines.append(
            f"{kind:<10} A queues 1000, then B 1; claims of {batch:>2}: tasks claimed before "
            f"B's  old {ahead[False]:5d}   fair {ahead[True]:5d}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=2, metavar=("URL", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--latency-tasks", type=int, default=60)
    parser.add_argument("--throughput-tasks", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--claim-tasks", type=int, default=20000)
    parser.add_argument("--claims-only", action="store_true", help="only the claim section")
    parser.add_argument("--no-claims", action="store_true", help="skip the claim section")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker_main(*args.worker))
        return
    print(f"cpus={os.cpu_count()}  (worker processes use the production Worker loop)")
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in args.engines.split(","):
            if not args.claims_only:
                for n in (int(w) for w in args.workers.split(",")):
                    print(measure(kind, n, args.latency_tasks, args.throughput_tasks, Path(tmpdir)))
            if not args.no_claims:
                for line in measure_claims(kind, args.claim_tasks, Path(tmpdir)):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
