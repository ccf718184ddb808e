"""`reelserve.core.heap`: the process entry points freeze their startup objects, and garbage made
afterwards is still collected. In fresh interpreters: a frozen heap would outlive the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port, start_worker


def test_a_frozen_heap_still_collects_later_garbage() -> None:
    script = """
import gc, weakref
from reelserve.core.heap import MIDDLE_THRESHOLD, YOUNG_THRESHOLD, freeze_startup_heap
frozen = freeze_startup_heap()
assert frozen > 1000 and gc.get_freeze_count() == frozen, frozen
assert gc.get_threshold()[:2] == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD)
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
ref = weakref.ref(a)
del a, b
gc.collect()
assert ref() is None, "a cycle made after the freeze was not collected"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged: {log.read_text(errors='replace')}")


def test_serve_and_worker_freeze_their_startup_heap(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve_log = tmp_path / "serve.log"
    env = {**os.environ, "REELSERVE_DATA_DIR": str(data), "REELSERVE_SECRET_KEY": "test-secret"}
    with serve_log.open("wb") as out:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reelserve",
                "serve",
                "--port",
                str(free_port()),
                "--no-quickstart-key",
                "--no-worker",
                "--log-level",
                "info",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = start_worker(data, tmp_path / "worker.log")
    try:
        _wait_for_line(serve_log, "objects alive after startup", serve)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    try:
        worker_log = tmp_path / "worker.log"
        _wait_for_line(worker_log, "objects alive after startup", worker)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
