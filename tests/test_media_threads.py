"""`reelserve.media.threads`: media work runs below the event loop's CPU priority, on Linux.

Each test runs in a fresh interpreter: a thread's niceness can only go up, so a test that lowered
a pool's priority would leave its threads (and the module's state) to the next test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import LiveServer, make_settings, start_worker, submit, wait_task

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="niceness is per thread only on Linux"
)


def _run(code: str) -> dict[str, object]:
    script = textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


PRIORITY = """
import asyncio, json, os, threading
from reelserve.media import threads

def priority():
    return os.getpriority(os.PRIO_PROCESS, 0), threading.current_thread().name
"""


def test_media_threads_run_the_set_niceness_below_the_loop() -> None:
    out = _run(
        PRIORITY
        + """
async def main():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    threads.set_media_niceness(7)
    media, name = await threads.in_media_thread(priority)
    other, _ = await asyncio.to_thread(priority)
    print(json.dumps({"base": base, "media": media, "name": name, "other": other,
                      "loop": os.getpriority(os.PRIO_PROCESS, 0)}))
asyncio.run(main())
"""
    )
    base = int(str(out["base"]))
    assert out["media"] == min(19, base + 7)
    assert str(out["name"]).startswith("reelserve-media")
    # The event loop's thread and the default executor's threads keep their priority.
    assert out["loop"] == base and out["other"] == base


def test_niceness_zero_keeps_the_priority_and_a_change_starts_a_new_pool() -> None:
    out = _run(
        PRIORITY
        + """
async def main():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    threads.set_media_niceness(0)
    same, _ = await threads.in_media_thread(priority)
    threads.set_media_niceness(3)
    lower, _ = await threads.in_media_thread(priority)
    threads.set_media_niceness(0)
    back, _ = await threads.in_media_thread(priority)
    print(json.dumps({"base": base, "same": same, "lower": lower, "back": back}))
asyncio.run(main())
"""
    )
    base = int(str(out["base"]))
    assert out["same"] == base and out["back"] == base
    assert out["lower"] == min(19, base + 3)


def test_results_context_and_errors_cross_the_thread() -> None:
    out = _run(
        """
import asyncio, contextvars, json
from reelserve.media import threads

who = contextvars.ContextVar("who", default="nobody")

def read(suffix):
    return who.get() + suffix

def fail():
    raise ValueError("broken clip")

async def main():
    threads.set_media_niceness(5)
    who.set("task-1")
    value = await threads.in_media_thread(read, "!")
    try:
        await threads.in_media_thread(fail)
        error = None
    except ValueError as exc:
        error = str(exc)
    print(json.dumps({"value": value, "error": error}))
asyncio.run(main())
"""
    )
    assert out == {"value": "task-1!", "error": "broken clip"}


def test_an_out_of_range_niceness_is_refused() -> None:
    from reelserve.media.threads import set_media_niceness

    with pytest.raises(ValueError, match="0 to 19"):
        set_media_niceness(20)
    with pytest.raises(ValueError, match="0 to 19"):
        set_media_niceness(-1)


def _nice(pid: int, tid: str) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        # After the command in parentheses: field 19 of stat(5) is the niceness.
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def test_a_worker_process_runs_its_media_threads_at_its_setting(tmp_path: Path) -> None:
    """A `reelserve worker` at `worker_media_nice` 6 makes a sandbox clip (render, encode,
    probe, thumbnail) in threads 6 steps below its main thread; its main thread keeps its own."""
    data = tmp_path / "data"
    live = LiveServer(make_settings(data), run_worker=False).start()
    worker = start_worker(data, tmp_path / "worker.log", REELSERVE_WORKER_MEDIA_NICE="6")
    try:
        with live.client(live.mint("test")) as client:
            task_id = submit(client, {"model": "sandbox", "prompt": "a kite", "duration": 1})
            assert wait_task(client, task_id, timeout=60)["status"] == "completed"
        main = _nice(worker.pid, str(worker.pid))
        others = {_nice(worker.pid, tid) for tid in os.listdir(f"/proc/{worker.pid}/task")}
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        live.stop()
    assert main == os.getpriority(os.PRIO_PROCESS, 0)
    assert min(19, main + 6) in others, (tmp_path / "worker.log").read_text()
