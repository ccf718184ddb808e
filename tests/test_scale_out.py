"""Scale-out on PostgreSQL: 2 API processes and 4 worker processes share one database.

500 tasks are submitted through both APIs; one worker is killed with SIGKILL half-way. Every task
completes exactly once: none lost (all completed), none run to completion twice (each task's
completion appears once in the workers' logs, and the database agrees).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.databases import postgres_database
from tests.support import free_port

TASKS = 200  # many processes, a kill -9 halfway; more tasks only cost render time


def _env(data_dir: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REELSERVE_DATA_DIR": str(data_dir),
        "REELSERVE_DATABASE_URL": url,
        "REELSERVE_SECRET_KEY": "scale-out-secret",
        "REELSERVE_LEASE_SECONDS": "2",
        "REELSERVE_POLL_INTERVAL": "0.5",
    }


def test_many_processes_one_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with postgres_database() as url:
        env = _env(data_dir, url)
        subprocess.run(
            [sys.executable, "-m", "reelserve", "migrate"], env=env, check=True, timeout=60
        )
        key = subprocess.run(
            [sys.executable, "-m", "reelserve", "keys", "create", "--test"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()[-1]
        ports = [free_port(), free_port()]
        apis = [
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "reelserve", "serve", "--port", str(port)),
                    *("--no-worker", "--no-quickstart-key", "--log-level", "warning"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for port in ports
        ]
        logs = [tmp_path / f"worker{i}.log" for i in range(4)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "reelserve", "worker", "--concurrency", "2"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            for log in logs
        ]
        try:
            headers = {"Authorization": f"Bearer {key}"}
            for port in ports:
                _wait_up(f"http://127.0.0.1:{port}/healthz")
            body = {"model": "sandbox", "prompt": "scale", "duration": 1}

            def post(i: int) -> str:
                port = ports[i % 2]
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/videos/generations",
                    json={**body, "seed": i},
                    headers=headers,
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                task_id: str = r.json()["data"][0]["task_id"]
                return task_id

            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(post, range(TASKS)))
            assert len(set(ids)) == TASKS

            killed = False
            deadline = time.monotonic() + 900
            while True:
                counts = _counts(url)
                if not killed and counts.get("completed", 0) >= TASKS // 2:
                    workers[0].send_signal(signal.SIGKILL)
                    workers[0].wait(timeout=10)
                    killed = True
                if counts.get("completed", 0) + counts.get("failed", 0) >= TASKS:
                    break
                assert time.monotonic() < deadline, counts
                time.sleep(0.5)
            assert killed
            assert _counts(url) == {"completed": TASKS}

            # Both API processes see every task.
            for port in ports:
                listed = httpx.get(
                    f"http://127.0.0.1:{port}/v1/tasks",
                    params={"status": "completed", "limit": 100},
                    headers=headers,
                ).json()
                assert len(listed["data"]) == 100 and listed["has_more"]
        finally:
            for proc in workers[1:] + apis:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in workers[1:] + apis:
                proc.wait(timeout=60)

        text = "".join(log.read_text() for log in logs)
        completions = Counter(re.findall(r"task (task_\w+) completed", text))
        assert set(completions) == set(ids)
        assert max(completions.values()) == 1
        attempts = _attempts(url)
        assert all(a >= 1 for a in attempts.values())
        # the killed worker held tasks that other workers resumed
        assert any(a >= 2 for a in attempts.values())


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(sa.text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _counts(url: str) -> dict[str, int]:
    rows = _query(url, "SELECT status, count(*) FROM tasks GROUP BY status")
    return {str(r[0]): int(str(r[1])) for r in rows}


def _attempts(url: str) -> dict[str, int]:
    return {str(r[0]): int(str(r[1])) for r in _query(url, "SELECT id, attempts FROM tasks")}
