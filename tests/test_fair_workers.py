"""Fair queuing and max_running over real HTTP with real workers, on SQLite and PostgreSQL.

The API is the real app served by uvicorn on loopback (it runs no worker); three `Worker` loops
of their own `Reelserve` services (each its own engine, as separate processes would have) run in
a thread of the test process, with a sandbox provider registered on them whose run time the
test sets and which records, for every task, when it ran. Keys are made as `reelserve keys
create --max-running N` makes them.

- A key with max-running 2 submits 10 while another key submits 4: at no moment do more than 2
  of the first key's tasks run (the provider's record, and samples of the database), though
  slots are free; the rest wait as `pending`, and all 10 complete.
- After a burst of 200 tasks from one key, another key's single task starts within one task's
  run time (per slot).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reelserve.cli.keys import mint_key_with_webhook_secret
from reelserve.core import Reelserve
from reelserve.providers.base import ProviderBase
from reelserve.settings import Settings
from reelserve.store.db import create_engine
from reelserve.store.tables import tasks
from reelserve.worker.runner import Worker
from tests.databases import database_url
from tests.support import LiveServer, make_settings, submit, wait_task

BODY = {"model": "sandbox", "prompt": "a fair queue", "duration": 1}


class TimedProvider(ProviderBase):
    """Runs each task for `seconds`, recording (task id, start, end) in wall-clock time."""

    name = "sandbox"
    kind = "compute"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.runs: dict[str, tuple[float, float | None]] = {}

    async def run(self, spec: Any, ctx: Any) -> list[Any]:
        with self.lock:
            self.runs[ctx.task_id] = (time.time(), None)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            with self.lock:
                self.runs[ctx.task_id] = (self.runs[ctx.task_id][0], time.time())
        return []

    def started(self, task_id: str) -> float | None:
        with self.lock:
            run = self.runs.get(task_id)
        return run[0] if run else None

    def most_at_once(self, ids: set[str]) -> int:
        """The most of `ids` that ran at one moment."""
        now = time.time()
        with self.lock:
            spans = [(s, now if e is None else e) for t, (s, e) in self.runs.items() if t in ids]
        edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        most = running = 0
        for _, step in edges:
            running += step
            most = max(most, running)
        return most


class Workers:
    """`count` worker loops, each on its own service, in one background thread."""

    def __init__(self, settings: Settings, provider: TimedProvider, count: int, slots: int):
        self.settings, self.provider, self.count, self.slots = settings, provider, count, slots
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        services = [await Reelserve.open(self.settings) for _ in range(self.count)]
        for service in services:
            service.providers["sandbox"] = self.provider
        loops = [
            asyncio.create_task(
                Worker(service.worker_parts(), concurrency=self.slots, name=f"fair-{n}").run(
                    self.stopping
                )
            )
            for n, service in enumerate(services)
        ]
        self.ready.set()
        try:
            await asyncio.gather(*loops)
        finally:
            for service in services:
                await service.close()

    def __enter__(self) -> Workers:
        self.thread.start()
        assert self.ready.wait(60), "the workers did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(60)


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    with database_url(request.param, tmp_path) as url:
        settings = make_settings(tmp_path / "data", database_url=url, poll_interval=0.05)
        live = LiveServer(settings, run_worker=False).start()
        try:
            yield live
        finally:
            live.stop()


def mint(server: LiveServer, **limits: Any) -> str:
    return asyncio.run(
        mint_key_with_webhook_secret(server.settings, "test", "fair", changes=limits)
    )[0]


def _processing_among(server: LiveServer, ids: set[str]) -> int:
    """A sample of the database: how many of `ids` are processing."""

    async def read() -> int:
        engine = create_engine(server.settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                query = sa.select(sa.func.count()).where(
                    tasks.c.id.in_(ids), tasks.c.status == "processing"
                )
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_max_running_holds_across_workers_and_all_complete(api: LiveServer) -> None:
    provider = TimedProvider(0.4)
    limited, free = mint(api, max_running=2), mint(api)
    workers = Workers(api.settings, provider, count=3, slots=3)
    with workers, api.client(limited) as lc, api.client(free) as fc:
        mine = {submit(lc, BODY) for _ in range(10)}
        others = {submit(fc, BODY) for _ in range(4)}
        sampled, pending_seen = 0, 0
        deadline = time.monotonic() + 120
        while not all(provider.runs.get(t, (0, None))[1] for t in mine):
            assert time.monotonic() < deadline, "the limited key's tasks did not finish"
            sampled = max(sampled, _processing_among(api, mine))  # one snapshot
            assert sampled <= 2, sampled
            statuses = [lc.get(f"/v1/tasks/{t}").json()["data"]["status"] for t in mine]
            assert "failed" not in statuses  # read one by one, not a snapshot: no count here
            pending_seen = max(pending_seen, statuses.count("pending"))
            time.sleep(0.05)
        for task_id in mine | others:
            assert wait_task(lc if task_id in mine else fc, task_id)["status"] == "completed"
    assert provider.most_at_once(mine) == 2  # never more, and the limit was used
    assert provider.most_at_once(others) >= 3  # slots were free beside the limited key
    # The rest waited in the queue meanwhile: seen pending, and started in at least five waves
    # of two (the runs' own start times; how many were still pending at the first sample
    # depends on how fast the submits went).
    assert pending_seen >= 1
    starts = sorted(provider.runs[t][0] for t in mine)
    assert starts[-1] - starts[0] >= 4 * 0.4 * 0.9, starts
    assert sampled >= 1


def test_one_task_after_a_burst_starts_within_one_run(api: LiveServer) -> None:
    run, slots = 0.5, 2
    provider = TimedProvider(run)
    heavy, light = mint(api), mint(api)
    workers = Workers(api.settings, provider, count=1, slots=slots)
    with workers, api.client(heavy) as hc, api.client(light) as lc:
        burst = [submit(hc, BODY) for _ in range(200)]
        submitted = time.time()
        lone = submit(lc, BODY)
        view = lc.get(f"/v1/tasks/{lone}").json()["data"]
        deadline = time.monotonic() + 60
        while (started := provider.started(lone)) is None:
            assert time.monotonic() < deadline, "the lone task never started"
            time.sleep(0.02)
        assert wait_task(lc, lone)["status"] == "completed"
        # It waited at most one run for a slot to free (plus the claim's own latency) ...
        assert started - submitted < run + 0.5, started - submitted
        # ... and at most one burst task per slot started between its submit and its start.
        between = [t for t in burst if submitted <= (provider.started(t) or 0) < started]
        assert len(between) <= slots, len(between)
        # The position it was told: the heavy key was served already, so none go before it.
        assert view["status"] != "pending" or view["queue_position"] == 0, view
        still = hc.get(f"/v1/tasks/{burst[-1]}").json()["data"]
        # The rest of the burst still waits, counted from the runs that have started (counted
        # after the read, so never fewer than at it): how many ran depends on the submits' speed.
        ran = sum(1 for t in burst if provider.started(t) is not None)
        assert still["status"] == "pending", still
        assert still["queue_position"] >= len(burst) - 1 - ran - slots, (still, ran)
