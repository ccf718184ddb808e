"""Support of the relay tests: an upstream reelserve ("B") as a real `reelserve serve` process,
and a `RunContext` for running a relay provider directly.

B has its own data directory, port and SQLite database, short leases, and one small sandbox
model (`tiny`: 720p, 1-2 seconds, a list price so that a budget can bite). It can be killed
with SIGKILL and started again on the same port and data directory, with or without its
worker. Keys on B are minted in this process on B's database, as `reelserve keys create`
would (test keys: B runs the sandbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from reelserve.cli.keys import mint_key_with_webhook_secret
from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.providers.base import InputImages, TaskCancelled
from tests.support import free_port, make_settings

# The seed API sizes a video by its resolution: 720p is 1280x720 (one second renders quickly).
W, H = 1280, 720
TINY: dict[str, Any] = {
    "id": "tiny",
    "provider": "sandbox",
    "description": "B's small sandbox model",
    "durations": [1, 2],
    "default_duration": 1,
    "resolutions": ["720p"],
    "estimated_time": 2,
    "list_price": {"720p": {"video_audio": 1.0}},
}


class Upstream:
    """A `reelserve serve` subprocess: B."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "b-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.settings = make_settings(self.data_dir, models=[ModelEntry(**TINY)])

    def start(self, *, worker: bool = True) -> Upstream:
        self.starts += 1
        env = {
            **os.environ,
            "REELSERVE_DATA_DIR": str(self.data_dir),
            "REELSERVE_SECRET_KEY": "test-secret",
            "REELSERVE_LEASE_SECONDS": "2",
            "REELSERVE_POLL_INTERVAL": "0.1",
            "REELSERVE_PROGRESS_FLUSH_INTERVAL": "0.2",
            "REELSERVE_MODELS": json.dumps([TINY]),
        }
        with (self.root / f"b-{self.starts}.log").open("wb") as log:  # the child keeps its own
            self.proc = self._spawn(worker, env, log)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"B exited: {self.log()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"B did not start: {self.log()}"
            time.sleep(0.05)

    def _spawn(self, worker: bool, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable, "-m", "reelserve", "serve",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--no-quickstart-key",
                "--worker" if worker else "--no-worker", "--log-level", "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no shutdown, leases left held, nothing flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-3000:] for path in sorted(self.root.glob("b-*.log"))
        )

    async def mint(self, **changes: Any) -> str:
        """A test key on B, with limits (`budget`, `rate_per_minute`...)."""
        secret, _ = await mint_key_with_webhook_secret(
            self.settings, "test", "relay-test", changes=changes
        )
        return secret

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def tasks(self, key: str) -> list[dict[str, Any]]:
        """Every task of `key` on B, newest first."""
        with self.client(key) as client:
            answer = client.get("/v1/tasks", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def task(self, key: str, task_id: str) -> dict[str, Any]:
        with self.client(key) as client:
            answer = client.get(f"/v1/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        return data


class RelayContext:
    """A `RunContext` for a provider run directly: checkpoints and progress recorded, waits
    that a cancellation ends at once, as the worker's do."""

    def __init__(
        self,
        workdir: Path,
        *,
        resume_state: dict[str, Any] | None = None,
        images: InputImages | None = None,
        can_fail_over: bool = False,
    ) -> None:
        self.task_id = f"task_relaytest{secrets.token_hex(6)}"
        self.workdir = workdir
        self.resume_state = resume_state
        self.images = images or InputImages()
        self.can_fail_over = can_fail_over
        self.checkpoints: list[dict[str, Any]] = []
        self.progress: list[float] = []
        self._cancelled = threading.Event()
        self._wake: asyncio.Event | None = None
        self.polling = asyncio.Event()  # set at the checkpoint naming the upstream task
        self.sleeps = 0  # waits begun (between polls, before retries)
        self._slept = asyncio.Event()

    def report_progress(self, fraction: float) -> None:
        self.progress.append(fraction)

    def report_withheld(self, withheld: list[Any]) -> None:
        raise AssertionError(f"nothing is withheld by a relay: {withheld}")

    def cancel(self) -> None:
        """The client cancels (call from the test's event loop)."""
        self._cancelled.set()
        if self._wake is not None:
            self._wake.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise TaskCancelled("cancelled by the client")

    async def sleep(self, seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        self.check_cancelled()
        self.sleeps += 1
        self._slept.set()
        self._wake = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))
        self.check_cancelled()

    async def checkpoint(self, state: dict[str, Any]) -> None:
        self.resume_state = state
        self.checkpoints.append(json.loads(json.dumps(state)))  # durable: JSON, as stored
        if state.get("phase") == "polling":
            self.polling.set()

    async def until_sleeps(self, count: int) -> None:
        """Wait until the provider has begun `count` waits in all."""
        while self.sleeps < count:
            self._slept.clear()
            await self._slept.wait()

    def phases(self) -> list[str]:
        return [str(c.get("phase")) for c in self.checkpoints]

    async def until_polling(self, job: asyncio.Future[Any], within: float = 60) -> None:
        """Wait until the run in `job` has checkpointed its upstream task (it must not end
        first)."""
        waiting = asyncio.ensure_future(self.polling.wait())
        try:
            await asyncio.wait({job, waiting}, timeout=within, return_when="FIRST_COMPLETED")
        finally:
            waiting.cancel()
        assert not job.done(), job
        assert self.polling.is_set(), f"no upstream task after {within} s: {self.phases()}"


def relay_entry(api: str, base_url: str, key: str | None, **options: Any) -> ModelEntry:
    """A model entry on A served by the relay to B's `tiny` (the same capabilities)."""
    values = {k: v for k, v in TINY.items() if k not in ("provider", "description")}
    values.update(
        id="relayed",
        provider="relay",
        options={
            "api": api,
            "base_url": base_url,
            "model": "tiny",
            "poll_interval": 0.1,
            "poll_max_interval": 0.5,
            "retry_delay": 0.1,
            **({"api_key": key} if key is not None else {}),
            **options,
        },
    )
    return ModelEntry(**values)


def make_spec(**overrides: Any) -> GenerationSpec:
    """A 1-second request of the relayed model at B's size."""
    values: dict[str, Any] = {
        "model": "relayed",
        "mode": "t2v",
        "prompt": "a paper boat on a pond",
        "duration": 1,
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "width": W,
        "height": H,
        "fps": 24,
        "seed": 11,
        "seed_given": True,
        "sample_count": 1,
        "generate_audio": False,
        "person_generation": "allow_adult",
        "resize_mode": "pad",
    }
    values.update(overrides)
    return GenerationSpec(**values)


def picture() -> NDArray[np.uint8]:
    """A gradient with a solid block: a first frame a wrong one would not match."""
    ys, xs = np.mgrid[0:H, 0:W]
    image = np.stack([xs * 255 // W, ys * 255 // H, np.full_like(xs, 90)], axis=-1)
    image[40:100, 60:140] = (230, 200, 20)
    return image.astype(np.uint8)


def png(image: NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@contextlib.contextmanager
def dropping_upstream() -> Iterator[tuple[str, list[bytes]]]:
    """A listener on loopback that reads each request's head and closes the connection without
    answering: a create whose outcome the sender cannot know. Yields its URL and the request
    heads it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    heads: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                heads.append(data.split(b"\r\n\r\n", 1)[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def workdir(tmp_path: Path, name: str = "work") -> Path:
    """A provider's work directory under `tmp_path` (the worker makes one per attempt)."""
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path
