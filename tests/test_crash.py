"""Crash safety: a worker process killed with SIGKILL mid-task loses nothing.

An API server without a worker takes submissions; worker process 1 claims a task and is killed
while rendering it; worker process 2 resumes it (the lease expired) and finishes every task.
Each task completes exactly once, as the workers' own logs and the store both show.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import LiveServer, make_settings, start_worker, submit, wait_progress, wait_task


@pytest.mark.slow
def test_sigkill_mid_task_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    live = LiveServer(make_settings(data_dir), run_worker=False).start()
    first = second = None
    try:
        key = live.mint("test")
        with live.client(key) as c:
            long_task = submit(c, {"model": "sandbox", "prompt": "slow", "duration": 4})
            others = [
                submit(c, {"model": "sandbox", "prompt": f"quick {i}", "duration": 1})
                for i in range(3)
            ]
            first = start_worker(data_dir, tmp_path / "w1.log")
            # wait until worker 1 is visibly rendering the long task
            view = wait_progress(c, long_task, 10)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = view["progress"]

            second = start_worker(data_dir, tmp_path / "w2.log")
            final = wait_task(c, long_task, timeout=180)
            assert final["status"] == "completed", final
            assert final["progress"] == 100 and final["progress"] >= killed_at
            for task_id in others:
                assert wait_task(c, task_id, timeout=120)["status"] == "completed"
            assert len(final["result"]["videos"]) == 1
            video = c.get(final["result"]["videos"][0]["url"][0])
            assert video.status_code == 200 and len(video.content) > 1000
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        live.stop()

    # Graceful stop (SIGTERM) exited cleanly.
    assert second is not None and second.returncode == 0

    logs = (tmp_path / "w1.log").read_text() + (tmp_path / "w2.log").read_text()
    completions = Counter(re.findall(r"task (task_\w+) completed", logs))
    assert completions[long_task] == 1
    assert all(completions[t] == 1 for t in others)
    assert "task " + long_task + " completed" in (tmp_path / "w2.log").read_text()

    engine = sa.create_engine(f"sqlite:///{data_dir / 'reelserve.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status, attempts FROM tasks")).all()
    engine.dispose()
    by_id = {r[0]: r for r in rows}
    assert by_id[long_task][1] == "completed" and by_id[long_task][2] == 2
    assert all(by_id[t][1] == "completed" for t in others)
    # the resumed attempt cleared the killed attempt's scratch files, then its own
    assert not (data_dir / "work" / long_task).exists()
    media = sorted(p.name for p in (data_dir / "media" / long_task).iterdir())
    assert media == ["0.jpg", "0.mp4"]
