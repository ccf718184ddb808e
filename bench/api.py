"""API throughput: reelserve beside a bare Starlette app returning the same bytes.

    python -m bench.api [--duration 5] [--connections 16]

Both servers run under the same uvicorn settings (one process, its default event loop and HTTP
parser) and are driven by the same load generator in this process. Printed: requests per second
for submit (POST /v1/videos/generations) and status polls (GET /v1/tasks/{id} of a completed task,
whose view is cached, and of a pending one, read from the database on every poll with its queue
position), the bare ceiling for each, and the ratio. The machine is shared and noisy, so
compare the ratios of one run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.loadgen import LoadResult, http_request, run_load

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = {"model": "veo3.1-fast-official", "prompt": "a lighthouse at dusk", "duration": 4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _serve(data_dir: Path, port: int, worker: bool) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "reelserve", "serve", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"]
    args += ["--worker" if worker else "--no-worker", "--no-quickstart-key"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    _wait_up(f"http://127.0.0.1:{port}/healthz")
    return proc


def _bare(port: int, body: bytes, tmp: Path) -> subprocess.Popen[bytes]:
    payload = tmp / f"payload-{port}.json"
    payload.write_bytes(body)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", str(port), str(payload)], cwd=ROOT
    )
    _wait_up(f"http://127.0.0.1:{port}/healthz")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _mint(data_dir: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelserve",
            "keys",
            "create",
            "--test",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _line(name: str, ours: LoadResult, bare: LoadResult) -> str:
    ratio = ours.rate / bare.rate if bare.rate else 0.0
    return (
        f"{name:<22} reelserve {ours.rate:8.0f} req/s (p50 {ours.percentile(50) * 1000:5.1f} ms, "
        f"p99 {ours.percentile(99) * 1000:5.1f} ms)   bare {bare.rate:8.0f} req/s   "
        f"ratio {ratio:4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data_dir = tmp / "data"
        key = _mint(data_dir)
        auth = {"Authorization": f"Bearer {key}"}

        # A completed task to poll (rendered by an in-process worker, then the server restarts
        # without a worker so nothing else competes for the CPU while measuring).
        port = _port()
        proc = _serve(data_dir, port, worker=True)
        base = f"http://127.0.0.1:{port}"
        task_id = httpx.post(
            f"{base}/v1/videos/generations",
            json={"model": "sandbox", "prompt": "bench", "duration": 1},
            headers=auth,
        ).json()["data"][0]["task_id"]
        while httpx.get(f"{base}/v1/tasks/{task_id}", headers=auth).json()["data"][
            "status"
        ] not in ("completed", "failed"):
            time.sleep(0.2)
        _stop(proc)

        proc = _serve(data_dir, port, worker=False)
        pending_id = httpx.post(f"{base}/v1/videos/generations", json=SUBMIT, headers=auth).json()[
            "data"
        ][0]["task_id"]
        pending_body = httpx.get(f"{base}/v1/tasks/{pending_id}", headers=auth).content
        status_body = httpx.get(f"{base}/v1/tasks/{task_id}", headers=auth).content
        submit_body = httpx.post(f"{base}/v1/videos/generations", json=SUBMIT, headers=auth).content
        host = f"127.0.0.1:{port}"
        get_req = http_request("GET", f"/v1/tasks/{task_id}", host, auth)
        pending_req = http_request("GET", f"/v1/tasks/{pending_id}", host, auth)
        body = json.dumps(SUBMIT).encode()
        post_req = http_request(
            "POST",
            "/v1/videos/generations",
            host,
            {**auth, "Content-Type": "application/json"},
            body,
        )

        def load(target: int, request: bytes) -> LoadResult:
            return asyncio.run(
                run_load(
                    "127.0.0.1",
                    target,
                    request,
                    connections=args.connections,
                    duration=args.duration,
                )
            )

        ours_get = load(port, get_req)
        ours_pending = load(port, pending_req)
        ours_post = load(port, post_req)
        _stop(proc)

        bare_port = _port()
        bare = _bare(bare_port, status_body, tmp)
        bare_get = load(bare_port, get_req)
        _stop(bare)
        bare = _bare(bare_port, pending_body, tmp)
        bare_pending = load(bare_port, pending_req)
        _stop(bare)
        bare = _bare(bare_port, submit_body, tmp)
        bare_post = load(bare_port, post_req)
        _stop(bare)

    for result, name in ((ours_get, "status"), (ours_pending, "pending"), (ours_post, "submit")):
        bad = {k: v for k, v in result.statuses.items() if k != 200}
        if bad:
            print(f"warning: {name} answered non-200 statuses: {bad}", file=sys.stderr)
    print(f"cpus={os.cpu_count()} connections={args.connections} duration={args.duration}s")
    print(_line("GET task (completed)", ours_get, bare_get))
    print(_line("GET task (pending)", ours_pending, bare_pending))
    print(_line("POST /v1/videos/gen.", ours_post, bare_post))


if __name__ == "__main__":
    main()
