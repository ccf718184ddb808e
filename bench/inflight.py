"""Veo tasks in flight: what thousands of upstream operations cost one `reelserve serve`.

    python -m bench.inflight [--tasks 1000] [--polls 10] [--poll-interval 1] [--spread 0]
                             [--database sqlite|postgresql] [--baseline-src DIR]

A real `reelserve serve` process (API and in-process worker, the embedded defaults) runs N Veo
tasks against the local fake Google (`tests/fakes/google_veo.py`, Vertex AI backend), whose
operations are done after `--polls` polls (`poll_interval` seconds apart, so an operation lasts
about polls x interval seconds; `--spread F` varies that per operation by up to +-F, as real
operations vary, so that their ends do not all land in one second). While they are in flight it
prints, from one run:

- the server's CPU (cores) and RSS while polling (and its peak RSS over the whole run, which
  includes the downloads and thumbnails of the completions);
- database commits per second (PostgreSQL; `pg_stat_database`), and PostgreSQL's own cores
  (its server processes on this machine);
- submit p50/p99 and status-GET p50/p99 measured beside them, and status-GET p50/p99 on the
  idle server before the batch, as the reference;
- the lag from an operation's `done` answer to its task's `completed`;
- the bench's own cores (the fake Google answering the polls) and the whole machine's busy
  cores, which tell whether the figures above are the server's or a saturated machine's;
- the wall time of the batch against one operation's time.

`--baseline-src DIR` runs the same against another checkout's `src/` (e.g. a `git worktree` of
an earlier commit, with `REELSERVE_WORKER_CONCURRENCY` and `google.max_concurrency` set to N so
that it can hold them all), and prints the two side by side with their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.google_veo import FakeGoogle, serve  # noqa: E402


class SpreadFake(FakeGoogle):
    """The fake Google, each of whose operations lasts its own number of polls: uniform within
    +- `spread` of `done_after` (real Veo operations take from under a minute to several), so
    that their ends do not all come in the same second."""

    spread = 0.0
    _base = 1

    @property  # type: ignore[override]
    def done_after(self) -> int:
        if not self.spread:
            return self._base
        low = max(1, round(self._base * (1 - self.spread)))
        return random.randint(low, max(low, round(self._base * (1 + self.spread))))

    @done_after.setter
    def done_after(self, value: int) -> None:
        self._base = value


PROJECT = ("bench-proj", "us-central1")
TOKEN = "ya29.bench-token"
DEFAULT_REMOTE_BOUND = 1000  # worker_remote_concurrency and google.max_concurrency by default
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-At", "-v", "ON_ERROR_STOP=1"]


class Db:
    """The bench's own reads of the task table: sqlite3, or psql for PostgreSQL (the bench
    needs no synchronous PostgreSQL driver)."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target  # the SQLite file, or the PostgreSQL database name

    def rows(self, query: str) -> list[list[str]]:
        if self.kind == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.target, timeout=30)) as conn:
                return [[str(v) for v in row] for row in conn.execute(query).fetchall()]
        out = subprocess.run(
            [*PSQL, "-d", self.target, "-F", "\t", "-c", query],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def scalar(self, query: str) -> float:
        return float(self.rows(query)[0][0])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _database(kind: str, data_dir: Path) -> Iterator[tuple[str, Db]]:
    """(async URL for reelserve, the bench's reader)."""
    if kind == "sqlite":
        path = data_dir / "reelserve.db"
        yield f"sqlite+aiosqlite:///{path}", Db("sqlite", str(path))
        return
    name = f"bench_inflight_{secrets.token_hex(4)}"
    subprocess.run([*PSQL, "-d", "postgres", "-c", f"CREATE DATABASE {name}"], check=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", Db("postgresql", name)
    finally:
        subprocess.run(
            [*PSQL, "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            check=False,
            capture_output=True,
        )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds this machine spent busy (all cores, all processes) since it booted."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu(kind: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL server process on this machine (its backends serve the
    bench's database; nothing else runs here), by pid; empty for SQLite."""
    if kind != "postgresql":
        return {}
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = _cpu_seconds(int(entry.name))
    return found


def _postgres_cores(before: dict[int, float], kind: str, seconds: float) -> float:
    """PostgreSQL's cores since `before`: the processes alive now, each from its value then (or
    from its start); a backend that exited meanwhile is not counted, so this is a floor."""
    if kind != "postgresql":
        return float("nan")
    now = _postgres_cpu(kind)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items()) / seconds


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(label: str, src: Path, args: argparse.Namespace, fake: SpreadFake) -> dict[str, float]:
    fake.reset()
    fake.done_after = args.polls
    fake.spread = args.spread
    n = args.tasks
    with tempfile.TemporaryDirectory() as tmp, _database(args.database, Path(tmp)) as urls:
        data_dir = Path(tmp)
        async_url, db = urls
        port = _free_port()
        project, location = PROJECT
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [
                    str(src),
                    *([args.baseline_path] if label == "baseline" and args.baseline_path else []),
                ]
            ),
            "REELSERVE_DATA_DIR": str(data_dir),
            "REELSERVE_DATABASE_URL": async_url,
            "REELSERVE_SECRET_KEY": "bench",
            "REELSERVE_GOOGLE__VERTEX": (
                f'[{{"project": "{project}", "location": "{location}", "access_token": "{TOKEN}"}}]'
            ),
            "REELSERVE_GOOGLE__VERTEX_BASE_URL": fake.url,
            "REELSERVE_GOOGLE__POLL_INTERVAL": str(args.poll_interval),
            "REELSERVE_GOOGLE__POLL_MAX_INTERVAL": str(args.poll_interval),
            "REELSERVE_GOOGLE__POLL_BACKOFF": "1",
            "REELSERVE_GOOGLE__DEADLINE": "3600",
        }
        if label == "baseline":
            # The earlier code has one bound for every task: let it hold them all. A baseline
            # with the remote bound needs it raised too, or it holds 1,000 at once while the
            # run beside it holds N (a 3,000-task comparison looked 50 times faster to land).
            env["REELSERVE_WORKER_CONCURRENCY"] = str(n)
            env["REELSERVE_WORKER_REMOTE_CONCURRENCY"] = str(max(n, DEFAULT_REMOTE_BOUND))
            env["REELSERVE_GOOGLE__MAX_CONCURRENCY"] = str(n)
        elif n > DEFAULT_REMOTE_BOUND:
            # Beyond the default remote bound (and the credential's): raise both to N.
            env["REELSERVE_WORKER_REMOTE_CONCURRENCY"] = str(n)
            env["REELSERVE_GOOGLE__MAX_CONCURRENCY"] = str(n)
        py = [sys.executable, "-m", "reelserve"]
        subprocess.run([*py, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        minted = subprocess.run(
            [*py, "keys", "create", "--live"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if minted.returncode != 0:
            raise RuntimeError(f"{label}: keys create failed: {minted.stderr[-2000:]}")
        key = minted.stdout.split()[-1]
        serve_args = ["serve", "--port", str(port), "--no-quickstart-key", "--log-level", "warning"]
        if args.worker_process:
            serve_args.append("--no-worker")
        server = subprocess.Popen(
            [*py, *serve_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # `--worker-process`: the tasks run in a `reelserve worker` of their own, and the API
        # process only answers (the deployment of docs/deploy.md); the worker's CPU and RSS
        # are the figures of the polling.
        worker = (
            subprocess.Popen(
                [*py, "worker", "--log-level", "warning"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(args.worker_log, "ab") if args.worker_log else subprocess.DEVNULL,  # noqa: SIM115
            )
            if args.worker_process
            else None
        )
        measured = worker if worker is not None else server
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}

        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{label}: the server did not start")
                time.sleep(0.2)
            body = {"model": "veo3.1-fast-official", "duration": 4}
            client = httpx.Client(base_url=base, headers=headers, timeout=60)

            def submit(i: int) -> tuple[str, float]:
                started = time.perf_counter()
                r = client.post("/v1/videos/generations", json={**body, "prompt": f"bench {i}"})
                assert r.status_code == 200, r.text
                return r.json()["data"][0]["task_id"], time.perf_counter() - started

            # The reference: status GETs of one task on the idle server, for 5 s, before the
            # batch (GETs only, so that no task is added).
            mp = multiprocessing.get_context("spawn")
            first_id, _ = submit(-1)
            idle_stop = mp.Event()
            idle_out, idle_in = mp.Pipe(duplex=False)
            idle_probe = mp.Process(
                target=_probe,
                args=(base, headers, body, [first_id], 1, idle_stop, idle_in, False),
                daemon=True,
            )
            idle_probe.start()
            time.sleep(5)
            idle_stop.set()
            idle_gets = [latency for _, latency in idle_out.recv()[0]]
            idle_probe.join(timeout=30)

            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                submitted = list(pool.map(submit, range(n)))
            submit_wall = time.monotonic() - t0
            ids = {f"bench {i}": tid for i, (tid, _) in enumerate(submitted)}

            # Beside the tasks in flight: CPU and RSS, probes of submit and status GET. The
            # probe is a process of its own: in this one the fake Google's thread answers
            # thousands of polls and holds the GIL, which a probe here would wait for.
            stop = mp.Event()
            results_out, results_in = mp.Pipe(duplex=False)
            probe_ids = [tid for tid, _ in submitted]
            prober = mp.Process(
                target=_probe,
                args=(base, headers, body, probe_ids, n, stop, results_in),
                daemon=True,
            )
            cpu_start, at_start = _cpu_seconds(measured.pid), time.monotonic()
            api_cpu_start = _cpu_seconds(server.pid)
            fake_cpu_start, busy_start = _cpu_seconds(os.getpid()), _machine_busy()
            commits_start = _commits(db, args.database)
            postgres_start = _postgres_cpu(args.database)
            prober.start()
            # Only polling: from a second after the last submit until shortly before the first
            # operation is done (no downloads, probes or thumbnails yet).
            op_seconds = args.polls * args.poll_interval
            window_end = t0 + 0.85 * op_seconds * (1 - args.spread)
            polling_cores = polling_commits = polling_rss = polling_postgres = float("nan")
            w0 = math.inf  # no polling-only window unless the one below opens
            if window_end - time.monotonic() > 3:
                time.sleep(1)
                c0, w0, k0 = (
                    _cpu_seconds(measured.pid),
                    time.monotonic(),
                    _commits(db, args.database),
                )
                postgres_polling_start = _postgres_cpu(args.database)
                polling_rss = _rss_mb(measured.pid)
                while time.monotonic() < window_end:
                    time.sleep(min(0.5, max(0.0, window_end - time.monotonic())))
                    polling_rss = max(polling_rss, _rss_mb(measured.pid))
                span = time.monotonic() - w0
                polling_cores = (_cpu_seconds(measured.pid) - c0) / span
                polling_commits = (_commits(db, args.database) - k0) / span
                polling_postgres = _postgres_cores(postgres_polling_start, args.database, span)
            rss = 0.0 if math.isnan(polling_rss) else polling_rss
            done_wait = time.monotonic() + args.timeout
            while _unfinished(db, n + 1) > 0:  # and the reference task
                rss = max(rss, _rss_mb(measured.pid))
                if time.monotonic() > done_wait:
                    raise RuntimeError(f"{label}: tasks still unfinished after {args.timeout}s")
                time.sleep(0.5)
            stop.set()
            probe_gets_at, probe_submits_at = results_out.recv()
            prober.join(timeout=30)
            probe_gets = [latency for _, latency in probe_gets_at]
            probe_submits = [latency for _, latency in probe_submits_at]
            # The probes that started in the polling-only window, apart.
            polling_gets, polling_submits = (
                [latency for at, latency in probes if w0 <= at < window_end]
                for probes in (probe_gets_at, probe_submits_at)
            )
            for what, probes, most in (
                ("submits", probe_submits_at, 5),
                ("status GETs", probe_gets_at, 10),
            ):
                slowest = sorted(probes, key=lambda p: -p[1])[:most]
                print(
                    f"  {label}: slowest {what} (s after the batch's first submit, ms): "
                    + ", ".join(f"{at - t0:.1f}s {1000 * latency:.0f}" for at, latency in slowest),
                    flush=True,
                )
            elapsed = time.monotonic() - at_start
            cores = (_cpu_seconds(measured.pid) - cpu_start) / elapsed
            api_cores = (_cpu_seconds(server.pid) - api_cpu_start) / elapsed
            fake_cores = (_cpu_seconds(os.getpid()) - fake_cpu_start) / elapsed
            machine_cores = (_machine_busy() - busy_start) / elapsed
            commits = (_commits(db, args.database) - commits_start) / elapsed
            postgres_cores = _postgres_cores(postgres_start, args.database, elapsed)
            lags = _lags(db, fake, ids)
            failed = _count(db, "failed")
            for code, message, count in db.rows(
                "SELECT error_code, substr(error_message, 1, 160), count(*) FROM tasks "
                "WHERE status = 'failed' GROUP BY 1, 2"
            ):
                print(f"  {label}: {count} failed with {code}: {message}", flush=True)
        finally:
            for process in (worker, server):
                if process is None:
                    continue
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
    return {
        "tasks": n,
        "failed": failed,
        "submit_all_s": submit_wall,
        "submit_p50_ms": 1000 * _pct([s for _, s in submitted], 0.5),
        "batch_s": elapsed + submit_wall,
        "batch_over_one_op": (elapsed + submit_wall) / op_seconds,
        "cores_polling": polling_cores,
        "commits_per_s_polling": polling_commits,
        "postgres_cores_polling": polling_postgres,
        "cores_whole_run": cores,
        "api_cores_whole_run": api_cores if worker is not None else float("nan"),
        "fake_cores_whole_run": fake_cores,
        "machine_busy_cores": machine_cores,
        "machine_cores": float(os.cpu_count() or 0),
        "commits_per_s_whole_run": commits,
        "postgres_cores_whole_run": postgres_cores,
        "rss_polling_mb": polling_rss,
        "rss_peak_mb": rss,
        "probe_submit_p50_ms": 1000 * _pct(probe_submits, 0.5),
        "probe_submit_p99_ms": 1000 * _pct(probe_submits, 0.99),
        "idle_get_p50_ms": 1000 * _pct(idle_gets, 0.5),
        "idle_get_p99_ms": 1000 * _pct(idle_gets, 0.99),
        "probe_get_p50_ms": 1000 * _pct(probe_gets, 0.5),
        "probe_get_p99_ms": 1000 * _pct(probe_gets, 0.99),
        "polling_submit_p99_ms": 1000 * _pct(polling_submits, 0.99),
        "polling_get_p99_ms": 1000 * _pct(polling_gets, 0.99),
        "done_to_completed_p50_s": _pct(lags, 0.5),
        "done_to_completed_p99_s": _pct(lags, 0.99),
    }


def _probe(
    base: str,
    headers: dict[str, str],
    body: dict[str, object],
    ids: list[str],
    n: int,
    stop: Any,
    out: Any,
    submits_too: bool = True,
) -> None:
    """The probe process: status GETs of tasks in flight every 50 ms, a submit every tenth
    (`submits_too`); sends back (gets, submits), each a list of (monotonic start, latency),
    once `stop` is set."""
    gets: list[tuple[float, float]] = []
    submits: list[tuple[float, float]] = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        i = n
        while not stop.is_set():
            started = time.monotonic()
            client.get(f"/v1/tasks/{ids[i % n]}")
            gets.append((started, time.monotonic() - started))
            if submits_too and len(gets) % 10 == 0:
                started = time.monotonic()
                client.post("/v1/videos/generations", json={**body, "prompt": f"probe {i}"})
                submits.append((started, time.monotonic() - started))
            i += 1
            time.sleep(0.05)
    out.send((gets, submits))


def _unfinished(db: Db, n: int) -> int:
    done = db.scalar(
        "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed', 'cancelled')"
    )
    return max(0, n - int(done))


def _count(db: Db, status: str) -> float:
    return db.scalar(f"SELECT count(*) FROM tasks WHERE status = '{status}'")


def _commits(db: Db, kind: str) -> float:
    if kind != "postgresql":
        return float("nan")
    return db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")


def _lags(db: Db, fake: FakeGoogle, ids: dict[str, str]) -> list[float]:
    """Per task: its `finished_at` minus the time the fake answered its operation's done poll."""
    done_at: dict[str, float] = {}
    with fake.lock:
        operations = list(fake.operations.values())
        requests = list(fake.requests)
    by_name: dict[str, list[float]] = {}
    for r in requests:
        name = r.body.get("operationName") if isinstance(r.body, dict) else None
        if isinstance(name, str):
            by_name.setdefault(name, []).append(r.at)
    for op in operations:
        times = sorted(by_name.get(op.name, []))
        prompt = str(op.instance.get("prompt"))
        if prompt in ids and len(times) > op.done_after:
            done_at[ids[prompt]] = times[op.done_after]
    rows = db.rows("SELECT id, finished_at FROM tasks WHERE finished_at IS NOT NULL")
    return [float(f) - done_at[i] for i, f in rows if i in done_at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=10, help="polls until an operation is done")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        help="each operation lasts polls x (1 +- this), uniformly (0: all alike)",
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    parser.add_argument(
        "--baseline-path",
        help="more import paths for the baseline (e.g. a `pip install --target` of the "
        "packages an older release needed, such as google-genai 2.x)",
    )
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="run the tasks in a `reelserve worker` process beside `reelserve serve --no-worker` "
        "(cores and RSS are then the worker's)",
    )
    parser.add_argument("--worker-log", help="append the worker's log (warnings and up) here")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    runs: list[tuple[str, Path]] = [("reelserve", ROOT / "src")]
    if args.baseline_src is not None:
        runs.insert(0, ("baseline", args.baseline_src.resolve()))
    fake = SpreadFake(vertex_projects=(PROJECT,), static_tokens=(TOKEN,))
    results: dict[str, dict[str, float]] = {}
    with serve(fake):
        for label, src in runs:
            print(f"running {label} ({src}): {args.tasks} tasks on {args.database}", flush=True)
            results[label] = run_one(label, src, args, fake)
    names = list(results)
    print(
        f"\n{'figure':28}"
        + "".join(f"{n:>14}" for n in names)
        + ("  ratio" if len(names) > 1 else "")
    )
    for figure in results[names[-1]]:
        row = [results[n][figure] for n in names]
        line = f"{figure:28}" + "".join(f"{v:14.3f}" for v in row)
        if len(row) == 2 and row[0]:
            line += f"  {row[1] / row[0]:.3f}"
        print(line)


if __name__ == "__main__":
    main()
