"""A worker's bookkeeping: the claim loop's bounds (tasks that compute here, tasks that wait on
a remote service; webhook deliveries are in test_webhooks.py), attempts tracked one by one, and
periodic jobs whose failures are logged without stopping the loop.

With `worker_concurrency` 1 and `worker_remote_concurrency` 10, a sandbox task (compute) holds
the worker's one compute slot while ten Veo tasks (remote: each waits on the fake Google) are in
flight beside it; a second sandbox task and two more Veo tasks wait their turn in the queue. The
server is the real app on loopback; Google is the local fake.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelserve.core import Reelserve
from reelserve.domain.task import TaskStatus
from reelserve.providers.base import ProviderBase
from reelserve.store.tables import tasks
from reelserve.worker.runner import Worker
from tests.fakes.google_veo import FakeGoogle, serve
from tests.support import LiveServer, make_settings, submit, wait_task

KEY = "AIzaSlotsKey0001"
REMOTE_TASKS = 12
REMOTE_BOUND = 10


@pytest.fixture()
def fake() -> Iterator[FakeGoogle]:
    with serve(FakeGoogle(api_keys=(KEY,))) as running:
        yield running


def _status(client: httpx.Client, task_id: str) -> str:
    status: str = client.get(f"/v1/tasks/{task_id}").json()["data"]["status"]
    return status


@pytest.mark.slow
def test_remote_tasks_do_not_take_compute_slots(fake: FakeGoogle, tmp_path: Path) -> None:
    google = {
        "api_key": KEY,
        "base_url": fake.url,
        "max_concurrency": 100,
        "poll_interval": 0.05,
        "poll_max_interval": 0.2,
    }
    settings = make_settings(
        tmp_path / "data",
        worker_concurrency=1,
        worker_remote_concurrency=REMOTE_BOUND,
        google=google,
    )
    live = LiveServer(settings).start()
    try:
        with live.client(live.mint("live", "slots")) as client:
            fake.finish = False  # every Veo operation waits until the test says
            # A compute task long enough to still be running while the remote ones start.
            busy = submit(client, {"model": "sandbox", "prompt": "long render", "duration": 10})
            deadline = time.monotonic() + 60
            while _status(client, busy) != "processing":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            queued = submit(client, {"model": "sandbox", "prompt": "next", "duration": 1})
            veo = [
                submit(client, {"model": "veo3.1-fast-official", "prompt": f"v{i}", "duration": 4})
                for i in range(REMOTE_TASKS)
            ]
            while len(fake.operations) < REMOTE_BOUND:
                assert time.monotonic() < deadline, f"{len(fake.operations)} operations started"
                time.sleep(0.05)
            # Ten are in flight upstream at once, beside the compute task, while the second
            # compute task waits for the one compute slot...
            assert _status(client, busy) == "processing"
            assert _status(client, queued) == "pending"
            # ... and the other two Veo tasks for a remote slot.
            time.sleep(1.0)  # time for more to start, were the remote bound not kept
            assert len(fake.operations) == REMOTE_BOUND
            statuses = [_status(client, t) for t in veo]
            assert statuses.count("processing") == REMOTE_BOUND
            assert statuses.count("pending") == REMOTE_TASKS - REMOTE_BOUND
            fake.finish_all()
            for task_id in [*veo, busy, queued]:
                assert wait_task(client, task_id, timeout=120)["status"] == "completed"
    finally:
        live.stop()
    assert len(fake.submits()) == REMOTE_TASKS


class TwoAttemptsProvider(ProviderBase):
    """Attempt 1 runs until attempt 2 of the same task has started in the same worker, then
    ends (it finds itself lost); attempt 2 runs until it is told to stop."""

    name = "sandbox"
    kind = "compute"

    def __init__(self) -> None:
        self.calls = 0
        self.second_started = asyncio.Event()
        self.second_stopped: str | None = None
        self.first_seen: tuple[str | None, bool] | None = None  # its stop reason, its workdir

    async def run(self, spec: Any, ctx: Any) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            (ctx.workdir / "part.bin").write_bytes(b"half a clip")
            await self.second_started.wait()
            # Told at once that it lost the task, its scratch files still there.
            self.first_seen = (ctx.stop_reason, (ctx.workdir / "part.bin").exists())
            await asyncio.sleep(0.3)
            ctx.check_cancelled()  # lost: raises LeaseLost
            return []
        self.second_started.set()
        try:
            while True:
                ctx.check_cancelled()
                await asyncio.sleep(0.05)
        except Exception as exc:
            self.second_stopped = type(exc).__name__
            raise


async def test_an_old_attempt_ending_leaves_the_new_attempt_tracked(tmp_path: Path) -> None:
    """A task whose lease this worker lost, and which this same worker then claims again, has
    two attempts in the worker at once; the old one's end must not drop the new one, which the
    worker must still stop and hand back on shutdown (issue 11, point 5). The new attempt's
    start tells the old one it lost the task, before any renewal could (the lease is 60 s, so
    none comes in the test), and leaves the old one's scratch directory alone."""
    service = await Reelserve.open(make_settings(tmp_path / "data", lease_seconds=60.0))
    provider = TwoAttemptsProvider()
    service.providers["sandbox"] = provider
    key, _, _ = await service.access.create_key("test")
    task = await service.tasks.submit(key, {"model": "sandbox", "prompt": "p", "duration": 1})
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(service.worker_parts()).run(stop))
    try:
        deadline = time.monotonic() + 30
        while provider.calls < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # As after a stall: another worker took the task meanwhile and died, its lease expired.
        async with service.queue.engine.begin() as conn:
            await conn.execute(
                tasks.update()
                .where(tasks.c.id == task.id)
                .values(lease_owner="ghost", lease_expires_at=time.time() - 1)
            )
        while provider.calls < 2:
            assert time.monotonic() < deadline, "the task was never claimed again"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # attempt 1 finds itself lost and ends
        assert provider.first_seen == ("lost", True)
        current = await service.tasks.get(key, task.id)
        assert current.status is TaskStatus.PROCESSING
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    current = await service.tasks.get(key, task.id)
    await service.close()
    assert provider.second_stopped == "WorkerShutdown"
    # Handed back (release): no owner, the lease expired now, claimable by the next worker.
    assert current.lease_owner is None and current.releases == 1
    assert (current.lease_expires_at or 0) < time.time()


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_failing_periodic_job_is_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The retention sweep meets an expired task whose files directory is a symbolic link out
    of the storage root, which storage refuses to follow: every sweep fails, and each failure
    is logged with its traceback, while the worker goes on claiming and running tasks. Once the
    link is replaced by the directory, the next sweep deletes the files."""
    caplog.set_level(logging.INFO, logger="reelserve.worker")
    settings = make_settings(tmp_path / "data", sweep_interval=0.2)
    service = await Reelserve.open(settings)
    key, _, _ = await service.access.create_key("test")
    body = {"model": "sandbox", "prompt": "p", "duration": 1}

    async def status(task_id: str) -> TaskStatus:
        return (await service.tasks.get(key, task_id)).status

    async def done(task_id: str) -> bool:
        return await status(task_id) is TaskStatus.COMPLETED

    async def sweep_failures() -> int:
        return sum(
            1
            for r in caplog.records
            if r.getMessage().startswith("the retention sweep failed") and r.exc_info
        )

    first = await service.tasks.submit(key, body)
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(service.worker_parts()).run(stop))
    worker_log = logging.getLogger("reelserve.worker")
    restore: logging.Handler | None = None
    try:
        await _until(lambda: done(first.id), "the first task did not complete")
        files = settings.resolved_media_dir / first.id
        outside = tmp_path / "outside"
        shutil.move(files, outside)
        files.symlink_to(outside, target_is_directory=True)
        # As if it had finished long ago: its files are due for deletion.
        async with service.queue.engine.begin() as conn:
            await conn.execute(
                tasks.update()
                .where(tasks.c.id == first.id)
                .values(finished_at=time.time() - settings.result_ttl - 60)
            )

        async def failed_twice() -> bool:
            return await sweep_failures() >= 2

        await _until(failed_twice, "the sweep's failures were not logged")
        second = await service.tasks.submit(key, body)
        await _until(lambda: done(second.id), "the worker stopped claiming after the failures")
        assert not running.done()

        # Put the directory back between two sweeps, never during one: a sweep already on its
        # thread could otherwise find no directory at all (after the unlink, before the move),
        # delete nothing and mark the files expired while they are being put back. The swap
        # runs as the next failure is logged on the event loop, once that sweep has ended and
        # before the next one can start.
        class Restore(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("the retention sweep failed"):
                    worker_log.removeHandler(self)
                    files.unlink()
                    shutil.move(outside, files)

        restore = Restore()
        worker_log.addHandler(restore)

        async def swept() -> bool:
            return (await service.tasks.get(key, first.id)).files_expired_at is not None

        await _until(swept, "the sweep did not recover")
        assert restore not in worker_log.handlers
        assert not files.exists()
    finally:
        if restore is not None:
            worker_log.removeHandler(restore)  # a test that failed before the swap
        stop.set()
        await asyncio.wait_for(running, 30)
        await service.close()
    failure = next(r for r in caplog.records if r.getMessage().startswith("the retention sweep"))
    assert failure.levelno == logging.ERROR and failure.exc_info is not None
    assert "StorageKeyError" in caplog.text


class WaitingProvider(ProviderBase):
    """Runs until told to stop (a task in flight for as long as the test needs)."""

    name = "sandbox"
    kind = "compute"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, spec: Any, ctx: Any) -> list[Any]:
        self.started.set()
        while True:
            ctx.check_cancelled()
            await asyncio.sleep(0.05)


async def test_a_renewal_held_up_by_the_database_is_logged_and_measured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection holds SQLite's write lock for 1.2 s while a worker with a 1.5 s lease
    (renewed every 0.5 s) runs a task: the renewal waits for the lock, and the worker logs how
    long it took and how late it came, and counts it in `reelserve_lease_renewal_seconds`. The
    task keeps its lease: the renewal extends it from the moment it started."""
    caplog.set_level(logging.WARNING, logger="reelserve.worker")
    settings = make_settings(tmp_path / "data", lease_seconds=1.5)
    service = await Reelserve.open(settings)
    provider = WaitingProvider()
    service.providers["sandbox"] = provider
    key, _, _ = await service.access.create_key("test")
    task = await service.tasks.submit(key, {"model": "sandbox", "prompt": "p", "duration": 1})
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(service.worker_parts()).run(stop))
    registry = service.metrics.registry
    try:
        await asyncio.wait_for(provider.started.wait(), 30)
        await asyncio.sleep(0.6)  # one renewal in the clear
        path = settings.resolved_database_url.split("///", 1)[-1]
        # Up to 30 s for the lock (the default 5 s ran out once on a loaded CI machine).
        holder = sqlite3.connect(path, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(1.2)
        holder.execute("COMMIT")
        holder.close()
        await _until(
            lambda: _true(any("renewing 1 leases took" in r.getMessage() for r in caplog.records)),
            "the slow renewal was not logged",
        )
        current = await service.tasks.get(key, task.id)
        assert current.status is TaskStatus.PROCESSING and current.attempts == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await service.close()
    logged = [r.getMessage() for r in caplog.records if "renewing 1 leases took" in r.getMessage()]
    slow = max(logged, key=lambda message: float(message.split(" took ")[1].split(" s,")[0]))
    took = float(slow.split(" took ")[1].split(" s,")[0])
    assert 0.6 < took < 5, slow  # due every 0.5 s, it waited at least 0.7 s of the 1.2 s
    assert "0 attempt(s) found their lease lost" in slow
    count = registry.get_sample_value("reelserve_lease_renewal_seconds_count")
    total = registry.get_sample_value("reelserve_lease_renewal_seconds_sum")
    # The log gives the seconds to two places: the metric's sum may be up to 0.005 s below.
    assert count is not None and count >= 2 and total is not None and total >= took - 0.005


async def _true(value: bool) -> bool:
    return value
