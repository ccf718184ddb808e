"""The watchdog: a provider that ignores a cancel or a shutdown costs a bounded time (issue 13).

A thread cannot be killed, so a provider that never checks for a stop is abandoned: a cancelled
task fails with a `timeout` error `stop_timeout` seconds later, and a stopping worker hands the
task back after `shutdown_grace` seconds and exits even though the thread still runs. The
provider is `tests/stubborn_worker.StubbornProvider`, run by the real `Worker`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from reelserve.core import Reelserve
from reelserve.domain.task import TaskStatus
from reelserve.worker.runner import Worker
from tests.stubborn_worker import StubbornProvider
from tests.support import LiveServer, make_settings, start_worker, submit, wait_progress, wait_task


async def test_a_provider_that_ignores_a_cancel_fails_its_task(tmp_path: Path) -> None:
    service = await Reelserve.open(make_settings(tmp_path / "data", stop_timeout=1.0))
    stubborn = StubbornProvider()
    service.providers["sandbox"] = stubborn
    key, _, _ = await service.access.create_key("test")
    task = await service.tasks.submit(key, {"model": "sandbox", "prompt": "p", "duration": 4})
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(service.worker_parts()).run(stop))
    try:
        assert await asyncio.to_thread(stubborn.started.wait, 30)
        await service.tasks.cancel(key, task.id)
        deadline = time.monotonic() + 30
        while (current := await service.tasks.get(key, task.id)).status is TaskStatus.PROCESSING:
            assert time.monotonic() < deadline, "the cancelled task never finished"
            await asyncio.sleep(0.1)
        assert current.status is TaskStatus.FAILED
        assert current.error_code == "timeout"
        assert "did not stop within 1 s" in (current.error_message or "")
        assert not stubborn.release.is_set()  # the thread was abandoned, still blocked
    finally:
        stubborn.release.set()
        stop.set()
        await running
        await service.close()


@pytest.mark.slow
def test_a_worker_whose_provider_ignores_shutdown_exits_with_its_lease_released(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir)
    live = LiveServer(settings, run_worker=False).start()
    stubborn = resumer = None
    try:
        key = live.mint("test")
        with live.client(key) as c:
            tid = submit(c, {"model": "sandbox", "prompt": "stuck", "duration": 4})
            env = {
                **os.environ,
                "REELSERVE_DATA_DIR": str(data_dir),
                "REELSERVE_SECRET_KEY": "test-secret",
                "REELSERVE_POLL_INTERVAL": "0.1",
                "REELSERVE_PROGRESS_FLUSH_INTERVAL": "0.2",
                "REELSERVE_SHUTDOWN_GRACE": "1",
            }
            log = tmp_path / "stubborn.log"
            script = Path(__file__).with_name("stubborn_worker.py")
            stubborn = subprocess.Popen(
                [sys.executable, str(script)], env=env, stderr=log.open("wb")
            )
            wait_progress(c, tid, 1)  # the provider runs (and will ignore the stop)
            stubborn.send_signal(signal.SIGTERM)
            # Without the watchdog the process stayed alive for as long as the thread ran.
            assert stubborn.wait(timeout=30) == 1
            text = log.read_text()
            assert "did not stop within the 1 s grace period" in text
            assert "exits without waiting for 1 provider thread" in text

            engine = sa.create_engine(settings.resolved_database_url.replace("+aiosqlite", ""))
            with engine.connect() as conn:
                row = conn.execute(
                    sa.text("SELECT status, lease_owner, releases FROM tasks WHERE id = :id"),
                    {"id": tid},
                ).one()
            engine.dispose()
            assert tuple(row) == ("processing", None, 1)  # handed back, ready to resume

            resumer = start_worker(data_dir, tmp_path / "resumer.log")
            assert wait_task(c, tid, timeout=120)["status"] == "completed"
    finally:
        for proc in (stubborn, resumer):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL if proc is stubborn else signal.SIGTERM)
                proc.wait(timeout=30)
        live.stop()
