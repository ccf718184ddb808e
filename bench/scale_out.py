"""Scale-out on PostgreSQL: API and worker processes share one database; one worker is SIGKILLed.

    python -m bench.scale_out [--tasks 500] [--apis 2] [--workers 4] [--concurrency 2]

`--apis` `reelserve serve --no-worker` processes and `--workers` `reelserve worker` processes
(each running `--concurrency` sandbox renders) share a fresh database on the PostgreSQL at
127.0.0.1:5432. N one-second sandbox tasks are submitted through the APIs in turn, 8 at a time;
once half have completed, worker 0 is killed with SIGKILL while it holds leases. It prints the
submit rate, the drain rate, how many tasks the killed worker held and how they were resumed,
and checks that every task completed exactly once (none lost; none completed twice, by the
workers' logs and the database): it exits 1 if not. `tests/test_scale_out.py` runs the same
`run()` with 40 tasks and asserts the same properties one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

PG = "postgres@127.0.0.1:5432"


@dataclass
class Outcome:
    """What one run saw; `problems()` lists the broken guarantees."""

    tasks: int
    ids: list[str]
    counts: dict[str, int]  # final status -> tasks, from the database
    attempts: dict[str, int]  # task id -> attempts, from the database
    orphans: list[str]  # tasks the killed worker held a lease on when it died
    completions: Counter[str]  # task id -> "completed" lines in the workers' logs
    completed_by_killed: Counter[str]  # the same, in the killed worker's log only
    listed: list[tuple[int, bool]] = field(default_factory=list)  # per API: page size, has_more
    returncodes: list[int] = field(default_factory=list)  # of the workers stopped by SIGTERM
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0

    def problems(self) -> list[str]:
        found = []
        if len(set(self.ids)) != self.tasks:
            found.append(f"{len(set(self.ids))} distinct task ids for {self.tasks} submits")
        if self.counts != {"completed": self.tasks}:
            found.append(f"final statuses {self.counts}")
        if set(self.completions) != set(self.ids):
            found.append(f"{len(set(self.ids) - set(self.completions))} tasks never logged done")
        if self.completions and max(self.completions.values()) != 1:
            found.append(f"completed twice: {[t for t, n in self.completions.items() if n > 1]}")
        if not self.orphans:
            found.append("the killed worker held no lease")
        for task_id in self.orphans:
            if self.attempts.get(task_id, 0) < 2 or self.completed_by_killed[task_id]:
                found.append(f"{task_id} was not resumed by another worker")
        if any(n < 1 for n in self.attempts.values()):
            found.append("a task has no attempt")
        if any(size != min(100, self.tasks // 2) or not more for size, more in self.listed):
            found.append(f"an API does not list every task: {self.listed}")
        if any(code != 0 for code in self.returncodes):
            found.append(f"a worker stopped by SIGTERM exited with {self.returncodes}")
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(sa.text(sql), params)).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _counts(url: str) -> dict[str, int]:
    rows = _query(url, "SELECT status, count(*) FROM tasks GROUP BY status")
    return {str(r[0]): int(str(r[1])) for r in rows}


def _held_by(url: str, pid: int) -> list[str]:
    """Tasks leased by the worker process `pid` (lease tokens are `host:pid:worker:attempt`)."""
    sql = "SELECT id, lease_owner FROM tasks WHERE status = 'processing'"
    return [str(r[0]) for r in _query(url, sql) if str(r[1]).split(":")[1:2] == [str(pid)]]


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(
    url: str,
    workdir: Path,
    tasks: int,
    *,
    apis: int = 2,
    workers: int = 4,
    concurrency: int = 2,
    timeout: float = 900,
) -> Outcome:
    """The run itself on the (empty) PostgreSQL database `url`; files go under `workdir`."""
    env = {
        **os.environ,
        "REELSERVE_DATA_DIR": str(workdir / "data"),
        "REELSERVE_DATABASE_URL": url,
        "REELSERVE_SECRET_KEY": "scale-out-secret",
        "REELSERVE_LEASE_SECONDS": "2",
        "REELSERVE_POLL_INTERVAL": "0.5",
    }
    cli = [sys.executable, "-m", "reelserve"]
    subprocess.run([*cli, "migrate"], env=env, check=True, timeout=120, stdout=subprocess.DEVNULL)
    key = subprocess.run(
        [*cli, "keys", "create", "--test"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()[-1]
    ports = [_free_port() for _ in range(apis)]
    quiet = ["--log-level", "warning"]
    api_procs = [
        subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--no-worker", "--no-quickstart-key", *quiet],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for port in ports
    ]
    logs = [workdir / f"worker{i}.log" for i in range(workers)]
    worker_procs = [
        subprocess.Popen(
            [*cli, "worker", "--concurrency", str(concurrency)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        for log in logs
    ]
    headers = {"Authorization": f"Bearer {key}"}
    orphans: list[str] = []
    listed: list[tuple[int, bool]] = []
    returncodes: list[int] = []
    try:
        for port in ports:
            _wait_up(f"http://127.0.0.1:{port}/healthz")
        body = {"model": "sandbox", "prompt": "scale", "duration": 1}

        def post(i: int) -> str:
            r = httpx.post(
                f"http://127.0.0.1:{ports[i % apis]}/v1/videos/generations",
                json={**body, "seed": i},
                headers=headers,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            task_id: str = r.json()["data"][0]["task_id"]
            return task_id

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(post, range(tasks)))
        submitted = time.monotonic()

        # Kill worker 0 half-way, at a moment it holds leases (almost always: tasks are waiting).
        victim = worker_procs[0]
        deadline = submitted + timeout
        while True:
            counts = _counts(url)
            done = counts.get("completed", 0) + counts.get("failed", 0)
            half = victim.poll() is None and counts.get("completed", 0) >= tasks // 2
            if half and _held_by(url, victim.pid):
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                orphans = _held_by(url, victim.pid)  # it can no longer change them
            alive = [proc for proc in worker_procs if proc.poll() is None]
            if done >= tasks or time.monotonic() > deadline or not alive:
                break
            time.sleep(0.2)
        drained = time.monotonic()
        if victim.poll() is None:  # never killed: the run is reported as a problem
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)

        for port in ports:  # every API process sees every task
            page = httpx.get(
                f"http://127.0.0.1:{port}/v1/tasks",
                params={"status": "completed", "limit": min(100, tasks // 2)},
                headers=headers,
                timeout=30,
            ).json()
            listed.append((len(page["data"]), bool(page["has_more"])))
    finally:
        others = worker_procs[1:] + api_procs
        for proc in others:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        returncodes = [proc.wait(timeout=60) for proc in others][: workers - 1]
        if worker_procs[0].poll() is None:
            worker_procs[0].kill()
            worker_procs[0].wait(timeout=10)

    pattern = re.compile(r"task (task_\w+) completed")
    completions = Counter(pattern.findall("".join(log.read_text() for log in logs)))
    rows = _query(url, "SELECT id, attempts FROM tasks")
    return Outcome(
        tasks=tasks,
        ids=ids,
        counts=_counts(url),
        attempts={str(r[0]): int(str(r[1])) for r in rows},
        orphans=orphans,
        completions=completions,
        completed_by_killed=Counter(pattern.findall(logs[0].read_text())),
        listed=listed,
        returncodes=returncodes,
        submit_seconds=submitted - started,
        drain_seconds=drained - submitted,
    )


def report(outcome: Outcome, *, apis: int, workers: int, concurrency: int) -> list[str]:
    n = outcome.tasks
    resumed = sum(1 for a in outcome.attempts.values() if a >= 2)
    problems = outcome.problems()
    return [
        f"cpus={os.cpu_count()}  tasks={n}  apis={apis}  workers={workers}x{concurrency}"
        "  (PostgreSQL, sandbox 1 s 720p)",
        f"submit  {outcome.submit_seconds:7.2f} s  {n / max(outcome.submit_seconds, 1e-9):7.1f}"
        " tasks/s",
        f"drain   {outcome.drain_seconds:7.2f} s  {n / max(outcome.drain_seconds, 1e-9):7.1f}"
        " tasks/s (with one worker killed half-way)",
        f"killed worker held {len(outcome.orphans)} leases; {resumed} tasks ran twice",
        "exactly once: " + ("yes" if not problems else "NO: " + "; ".join(problems)),
    ]


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://{PG}/test", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--apis", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    name = f"reelserve_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run(
                f"postgresql+asyncpg://{PG}/{name}",
                Path(tmp),
                args.tasks,
                apis=args.apis,
                workers=args.workers,
                concurrency=args.concurrency,
                timeout=args.timeout,
            )
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    for line in report(outcome, apis=args.apis, workers=args.workers, concurrency=args.concurrency):
        print(line)
    return 1 if outcome.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
