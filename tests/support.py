"""Test support: run the real app under uvicorn on loopback, mint keys, poll tasks.

Nothing here patches the code under test: the server is `create_app(settings)` served by uvicorn
on 127.0.0.1, talked to with httpx over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from reelserve.api.app import create_app
from reelserve.cli.main import mint_key
from reelserve.settings import Settings

# The `server` fixture (conftest.py) runs a test on SQLite and on PostgreSQL. A test whose
# subject does not depend on the engine (rendering, image fitting) runs on SQLite only: the same
# session server, once.
sqlite_only = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "lease_seconds": 5.0,
        "poll_interval": 0.1,
        "progress_flush_interval": 0.2,
        "worker_concurrency": 2,
        "secret_key": "test-secret",
        "image_allow_networks": ["127.0.0.0/8", "::1/128"],
    }
    values.update(overrides)
    return Settings(**values)


class LiveServer:
    """`create_app(settings)` served by uvicorn in a background thread on an ephemeral port."""

    def __init__(self, settings: Settings, *, run_worker: bool | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings, run_worker=run_worker)
        # IPPROTO_TCP, as uvicorn's own bind has it: asyncio sets TCP_NODELAY only on sockets
        # whose protocol says TCP. Without it every keep-alive answer (headers and body are two
        # writes) waits out the client's 40 ms delayed ACK under Nagle's algorithm.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def mint(self, mode: str = "test", name: str = "") -> str:
        return asyncio.run(mint_key(self.settings, mode, name))

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def start_worker(data_dir: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A `reelserve worker` process on `data_dir` with short leases; its log goes to `log`."""
    full = {
        **os.environ,
        "REELSERVE_DATA_DIR": str(data_dir),
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_LEASE_SECONDS": "2",
        "REELSERVE_POLL_INTERVAL": "0.1",
        "REELSERVE_PROGRESS_FLUSH_INTERVAL": "0.2",
        "REELSERVE_IMAGE_ALLOW_NETWORKS": '["127.0.0.0/8", "::1/128"]',
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "reelserve", "worker", "--concurrency", "1"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def submit(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> str:
    response = client.post("/v1/videos/generations", json=body, **kwargs)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["code"] == 200
    (item,) = payload["data"]
    assert item["status"] == "submitted"
    task_id: str = item["task_id"]
    return task_id


def wait_task(
    client: httpx.Client,
    task_id: str,
    *,
    timeout: float = 120,
    until: tuple[str, ...] = ("completed", "failed", "cancelled"),
) -> dict[str, Any]:
    """Poll until the task reaches one of `until`; checks progress never decreases meanwhile."""
    deadline = time.monotonic() + timeout
    last_progress = -1
    while True:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        assert data["progress"] >= last_progress, "progress decreased"
        last_progress = data["progress"]
        if data["status"] in until:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {data['status']} after {timeout}s")
        time.sleep(0.1)


def wait_progress(
    client: httpx.Client, task_id: str, at_least: int = 1, *, timeout: float = 60
) -> dict[str, Any]:
    """Poll until the task is `processing` with progress >= `at_least` (a worker is visibly
    mid-task: the moment to SIGKILL it) and return that view. A task that ends first fails."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()["data"]
        if view["status"] == "processing" and view["progress"] >= at_least:
            return view
        assert view["status"] in ("pending", "processing"), (
            f"task ended before {at_least} %: {view}"
        )
        assert time.monotonic() < deadline, f"task {task_id} not at {at_least} % after {timeout}s"
        time.sleep(0.05)


@contextlib.contextmanager
def static_server(root: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving `root` (image URLs for image-to-video)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
