"""The CLI forms operators script: `keys create` prints the key alone on its last stdout line;
`serve` migrates, prints a ready-to-paste curl with a fresh key, and that curl works."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from reelserve.domain.ids import task_id
from reelserve.settings import Settings
from reelserve.store.db import create_engine, head_revision
from reelserve.store.queue import TaskQueue
from tests.support import free_port

# Every test runs the real `reelserve` command, a dozen processes each: the slow lane.
pytestmark = pytest.mark.slow


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reelserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    made = _run("keys", "create", "--test", "--name", "ci", "--data-dir", data)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rs_test_[A-Za-z0-9_-]{32}", key)
    live = _run("keys", "create", "--live", env={"REELSERVE_DATA_DIR": data})
    assert live.returncode == 0, live.stderr
    assert live.stdout.strip().splitlines()[-1].startswith("rs_live_")
    both = _run("keys", "create", "--test", "--live", "--data-dir", data)
    assert both.returncode != 0 and "exactly one" in both.stderr
    listed = _run("keys", "list", "--data-dir", data)
    assert key[:12] in listed.stdout and "ci" in listed.stdout
    assert key not in listed.stdout  # secrets are never shown again
    revoked = _run("keys", "revoke", key[:12], "--data-dir", data)
    assert revoked.returncode == 0, revoked.stderr
    migrated = _run("migrate", "--data-dir", data)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"database at revision {head_revision()}"


async def _queue_two(url: str) -> tuple[str, str]:
    """Two tasks of two keys in the store; the first is claimed (processing)."""
    engine = create_engine(url)
    queue = TaskQueue(engine)
    try:
        ids = []
        for key, model in (("key_a", "sandbox"), ("key_b", "veo3.1-fast-official")):
            task, _ = await queue.submit(
                task_id=task_id(),
                api_key_id=key,
                model=model,
                provider="sandbox",
                spec={"prompt": "x"},
                estimated_time=5,
            )
            ids.append(task.id)
        assert await queue.claim("w", lease_seconds=30, max_attempts=3) is not None
        return ids[0], ids[1]
    finally:
        queue.close()
        await engine.dispose()


def test_tasks_list_reads_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("migrate", "--data-dir", str(data)).returncode == 0
    running, waiting = asyncio.run(_queue_two(Settings(data_dir=data).resolved_database_url))
    wide = {"COLUMNS": "200"}  # a table as wide as its ids
    listed = _run("tasks", "list", "--data-dir", str(data), env=wide)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "task_" in line]
    assert [row.split()[1] for row in rows] == [waiting, running]  # newest first, every key
    assert "pending" in rows[0] and "veo3.1-fast-official" in rows[0]
    assert "processing" in rows[1] and "sandbox" in rows[1]
    pending = _run("tasks", "list", "--status", "pending", "--data-dir", str(data), env=wide)
    assert waiting in pending.stdout and running not in pending.stdout
    newest = _run("tasks", "list", "--limit", "1", "--data-dir", str(data), env=wide)
    assert waiting in newest.stdout and running not in newest.stdout


def test_serve_prints_a_working_curl(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "reelserve", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not any("/v1/tasks/TASK_ID" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited before printing the quickstart"
            lines.append(line)
        text = "".join(lines)
        key = re.search(r"export REELSERVE_KEY=(\S+)", text)
        assert key is not None, text
        curl = next(line for line in lines if "/v1/videos/generations" in line).strip()
        argv = shlex.split(curl.replace("$REELSERVE_KEY", key.group(1)))
        assert argv[0] == "curl"
        url = next(a for a in argv if a.startswith("http://"))
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        body = argv[argv.index("-d") + 1]
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.post(url, headers=headers, content=body, timeout=10)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"][0]["task_id"]
        poll = next(line for line in lines if "/v1/tasks/TASK_ID" in line)
        assert poll.strip().startswith("curl -s http://127.0.0.1:")
        deadline = time.monotonic() + 120
        while True:
            view = httpx.get(
                f"http://127.0.0.1:{port}/v1/tasks/{task_id}", headers=headers, timeout=10
            ).json()["data"]
            if view["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert view["status"] == "completed", view
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
