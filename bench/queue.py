"""Queue figures: submit-to-claim latency and claims per second, SQLite and PostgreSQL, 1-4 workers.

    python -m bench.queue [--latency-tasks 60] [--throughput-tasks 400] [--workers 1,2,4]

Each worker is a real `reelserve` worker process (the production `Worker` loop) whose only
provider does nothing, so the figures are the queue's own: claiming, leasing, heartbeats and
completion. Times come from the task rows themselves (`started_at - created_at` is the
submit-to-claim latency). With PostgreSQL, workers are woken by LISTEN/NOTIFY; with SQLite,
workers of other processes find new tasks by polling (`poll_interval`, 0.5 s by default), which
is what the latency column shows. PostgreSQL tests need the server on 127.0.0.1:5432.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=2, metavar=("URL", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--latency-tasks", type=int, default=60)
    parser.add_argument("--throughput-tasks", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker_main(*args.worker))
        return
    print(f"cpus={os.cpu_count()}  (worker processes use the production Worker loop)")
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in args.engines.split(","):
            for n in (int(w) for w in args.workers.split(",")):
                print(measure(kind, n, args.latency_tasks, args.throughput_tasks, Path(tmpdir)))


if __name__ == "__main__":
    main()
