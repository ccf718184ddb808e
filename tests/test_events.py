"""`GET /v1/tasks/{id}/events`: Server-Sent Events of a task's status and progress.

Read as raw `text/event-stream` over real HTTP (no SDK in between): event order, ids, progress
never decreasing, keep-alive comments, the end of the stream after the final state, errors in the
envelope, no stream left registered after a client goes away, and a stream served by an API-only
process for a task that a separate worker process runs (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reelserve.cli.main import mint_key
from reelserve.settings import Settings
from tests.databases import database_url
from tests.support import LiveServer, free_port, make_settings, start_worker, submit

QUICK = {"model": "sandbox", "prompt": "a paper boat on a pond", "duration": 2}
ORDER = {"pending": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}


@dataclass
class Event:
    id: str | None
    name: str
    data: dict[str, Any]


@dataclass
class Stream:
    """What one stream carried: its events and keep-alive comments, in order of arrival."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False


def read_sse(lines: Iterator[str], stream: Stream, *, stop_after: int | None = None) -> None:
    """Parse `text/event-stream` lines into `stream` until the response ends (or `stop_after`
    events arrived)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                stream.events.append(
                    Event(
                        fields.get("id"), fields.get("event", "message"), json.loads("".join(data))
                    )
                )
                if stop_after is not None and len(stream.events) >= stop_after:
                    return
            fields, data = {}, []
        elif line.startswith(":"):
            stream.comments.append(line)
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    stream.ended = True


def check_sequence(events: list[Event]) -> None:
    """ids count up from 1, statuses move forward only, progress never decreases, the event name
    says whether the status changed, and only the last event is a final state."""
    assert events, "no events"
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    previous: Event | None = None
    for event in events:
        status, progress = event.data["status"], event.data["progress"]
        assert 0 <= progress <= 100
        if previous is None:
            assert event.name == "status"
        else:
            before = previous.data
            assert ORDER[status] >= ORDER[before["status"]], (before["status"], status)
            assert progress >= before["progress"], "progress decreased"
            changed = status != before["status"]
            assert event.name == ("status" if changed else "progress"), event
            assert changed or progress > before["progress"], "an event without a change"
        previous = event
    assert all(ORDER[e.data["status"]] < 2 for e in events[:-1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(make_settings(tmp_path_factory.mktemp("events") / "data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No worker: its tasks stay pending (until cancelled); short keep-alives."""
    settings = make_settings(tmp_path_factory.mktemp("idle") / "data", events_keepalive=0.3)
    server = LiveServer(settings, run_worker=False).start()
    yield server
    server.stop()


def test_stream_follows_a_task_to_completion(live: LiveServer) -> None:
    key = live.mint()
    with live.client(key) as client:
        task_id = submit(client, QUICK)
        stream = Stream()
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            read_sse(response.iter_lines(), stream)
        assert stream.ended, "the stream did not end after the final state"
        check_sequence(stream.events)
        last = stream.events[-1].data
        assert last["status"] == "completed" and last["progress"] == 100
        assert len(last["result"]["videos"]) == 1
        # Data is the same view as GET /v1/tasks/{id} (served by the fast path).
        assert client.get(f"/v1/tasks/{task_id}").json()["data"] == last
        # Progress was streamed while the task ran, not only its start and end.
        assert any(0 < e.data["progress"] < 100 for e in stream.events), stream.events

        # A finished task's stream is its final view, then the end.
        again = Stream()
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            read_sse(response.iter_lines(), again)
        assert again.ended
        assert [(e.id, e.name, e.data) for e in again.events] == [("1", "status", last)]


def test_pending_keepalive_then_cancelled(idle: LiveServer) -> None:
    key = idle.mint()
    with idle.client(key) as client:
        task_id = submit(client, QUICK)
        stream = Stream()
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            lines = response.iter_lines()
            read_sse(lines, stream, stop_after=1)
            first = stream.events[0]
            assert first.name == "status" and first.data["status"] == "pending"
            assert first.data["queue_position"] == 0
            # Nothing changes while no worker runs: keep-alive comments flow (0.3 s apart).
            deadline = time.monotonic() + 10
            for line in lines:
                if line.startswith(":"):
                    stream.comments.append(line)
                if len(stream.comments) >= 2 or time.monotonic() > deadline:
                    break
            assert stream.comments[:2] == [": keep-alive", ": keep-alive"]
            with idle.client(key) as other:
                assert other.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            read_sse(lines, stream)
        assert stream.ended
        check_sequence(stream.events)
        assert [e.data["status"] for e in stream.events] == ["pending", "cancelled"]
        assert stream.events[-1].name == "status"


def test_errors_use_the_envelope(idle: LiveServer) -> None:
    owner, stranger = idle.mint(), idle.mint()
    with idle.client(owner) as client:
        task_id = submit(client, QUICK)
        unknown = client.get("/v1/tasks/task_nope/events")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "code": 404,
            "error": {
                "message": 'no task "task_nope" found',
                "type": "invalid_request_error",
                "param": "task_id",
            },
        }
    with idle.client(stranger) as client:
        other = client.get(f"/v1/tasks/{task_id}/events")
        assert other.status_code == 404
        assert other.json()["error"]["param"] == "task_id"
    with idle.client() as anon:
        denied = anon.get(f"/v1/tasks/{task_id}/events")
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
    with idle.client("rs_test_not-a-key") as bad:
        assert bad.get(f"/v1/tasks/{task_id}/events").status_code == 401


def _open_streams(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "reelserve_event_streams":
            return float(family.samples[0].value)
    raise AssertionError("reelserve_event_streams is missing")


def test_a_client_that_goes_away_leaves_nothing_behind(idle: LiveServer) -> None:
    key = idle.mint()
    with idle.client(key) as client:
        task_id = submit(client, QUICK)
        before = _open_streams(client)
        for _ in range(2):
            with (
                idle.client(key) as watcher,
                watcher.stream("GET", f"/v1/tasks/{task_id}/events") as response,
            ):
                lines = response.iter_lines()
                read_sse(lines, Stream(), stop_after=1)
                next(line for line in lines if line.startswith(":"))  # now registered
                assert _open_streams(client) == before + 1
            # The connection is closed here, mid-stream.
            deadline = time.monotonic() + 10
            while _open_streams(client) != before:
                assert time.monotonic() < deadline, "the stream stayed registered"
                time.sleep(0.05)


# -- across processes --------------------------------------------------------------------------


def _serve_api_only(data_dir: Path, port: int, log: Path, db_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REELSERVE_DATABASE_URL": db_url,
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_EVENTS_KEEPALIVE": "0.5",
    }
    return subprocess.Popen(
        [
            sys.executable, "-m", "reelserve", "serve", "--no-worker", "--no-quickstart-key",
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
            "--log-level", "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )  # fmt: skip


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"the API process exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API process did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
@pytest.mark.slow
def test_stream_from_an_api_process_of_a_task_run_by_a_worker_process(
    engine: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with database_url(engine, tmp_path) as db_url:
        settings = Settings(data_dir=data_dir, database_url=db_url, secret_key="test-secret")
        key = asyncio.run(mint_key(settings, "test", "events"))  # also migrates
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
        api = _serve_api_only(data_dir, port, api_log, db_url)
        worker: subprocess.Popen[bytes] | None = None
        try:
            _wait_healthy(url, api, api_log)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                task_id = submit(client, QUICK)
                stream = Stream()
                with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
                    assert response.status_code == 200
                    lines = response.iter_lines()
                    read_sse(lines, stream, stop_after=1)
                    # No worker exists yet: the task waits, and the stream says so.
                    assert stream.events[0].data["status"] == "pending"
                    next(line for line in lines if line.startswith(":"))
                    worker = start_worker(data_dir, worker_log, REELSERVE_DATABASE_URL=db_url)
                    read_sse(lines, stream)
                assert stream.ended, "the stream did not end after the final state"
                check_sequence(stream.events)
                statuses = [e.data["status"] for e in stream.events]
                assert statuses[0] == "pending" and statuses[-1] == "completed", statuses
                assert "processing" in statuses, statuses
                assert any(0 < e.data["progress"] < 100 for e in stream.events), statuses
                final = stream.events[-1].data
                assert client.get(f"/v1/tasks/{task_id}").json()["data"] == final
                video = client.get(final["result"]["videos"][0]["url"][0])
                assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        finally:
            for proc in (worker, api):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
