"""Prometheus `/metrics`: tasks by model and status, queue depth and age, time in queue, run time
by outcome and HTTP latency, read with prometheus_client's own text parser after real tasks ran
(in the server's process, and in a separate worker process). Upstream errors are counted by the
Veo provider against the fake Google (tests/test_google_veo.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    LiveServer,
    free_port,
    make_settings,
    start_worker,
    static_server,
    submit,
    wait_task,
)

QUICK = {"model": "sandbox", "prompt": "a lighthouse at dusk", "duration": 1}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed"
    return samples[key]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(make_settings(tmp_path_factory.mktemp("metrics") / "data")).start()
    yield server
    server.stop()


def test_metrics_after_tasks_ran_in_process(live: LiveServer, tmp_path: Path) -> None:
    key = live.mint()
    with live.client(key) as client, static_server(tmp_path) as images:
        done = [submit(client, QUICK) for _ in range(2)]
        broken = submit(
            client, {**QUICK, "first_frame_image": f"{images}/missing.png", "duration": 1}
        )
        for task_id in done:
            assert wait_task(client, task_id)["status"] == "completed"
        failed = wait_task(client, broken)
        assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_image"
        assert failed["error"]["type"] == "invalid_request_error"  # the image was the fault
        samples = scrape(client)

    # Task gauges from the store, by model and status (configured models show zeros).
    assert value(samples, "reelserve_tasks", model="sandbox", status="completed") == 2
    assert value(samples, "reelserve_tasks", model="sandbox", status="failed") == 1
    assert value(samples, "reelserve_tasks", model="sandbox", status="pending") == 0
    assert value(samples, "reelserve_tasks", model="veo3.1-fast-official", status="completed") == 0
    assert value(samples, "reelserve_queue_depth", model="sandbox") == 0
    assert value(samples, "reelserve_queue_oldest_seconds", model="sandbox") == 0
    # Observed by the in-process worker: one first claim per task, one attempt each.
    assert value(samples, "reelserve_task_queue_seconds_count", model="sandbox") == 3
    assert value(samples, "reelserve_task_queue_seconds_sum", model="sandbox") >= 0
    completed = {"model": "sandbox", "outcome": "completed"}
    assert value(samples, "reelserve_task_run_seconds_count", **completed) == 2
    assert value(samples, "reelserve_task_run_seconds_sum", **completed) > 0
    bucket = {**completed, "le": "+Inf"}
    assert value(samples, "reelserve_task_run_seconds_bucket", **bucket) == 2
    failed_run = {"model": "sandbox", "outcome": "failed"}
    assert value(samples, "reelserve_task_run_seconds_count", **failed_run) == 1
    # HTTP latency by route template (the fast path's status polls included).
    route = "/v1/videos/generations"
    assert value(samples, "reelserve_http_request_seconds_count", route=route) >= 3
    assert value(samples, "reelserve_http_request_seconds_count", route="/v1/tasks/{task_id}") >= 3
    assert (
        value(samples, "reelserve_http_requests_total", method="POST", route=route, status="200")
        >= 3
    )
    assert value(samples, "reelserve_event_streams") == 0


@pytest.mark.slow
def test_queue_depth_and_a_worker_process(tmp_path: Path) -> None:
    """An API-only server's gauges come from the store, so they count what a worker process
    does; that worker's own histograms are on its `--metrics-port`."""
    data_dir = tmp_path / "data"
    server = LiveServer(make_settings(data_dir), run_worker=False).start()
    worker = None
    try:
        key = server.mint()
        with server.client(key) as client:
            queued = [submit(client, QUICK) for _ in range(2)]
            queued.append(submit(client, {**QUICK, "model": "veo3.1-fast-official", "duration": 4}))
            time.sleep(1.1)
            samples = scrape(client)
            assert value(samples, "reelserve_queue_depth", model="sandbox") == 2
            assert value(samples, "reelserve_queue_depth", model="veo3.1-fast-official") == 1
            assert value(samples, "reelserve_tasks", model="sandbox", status="pending") == 2
            assert value(samples, "reelserve_queue_oldest_seconds", model="sandbox") >= 1
            # Nothing ran in this process.
            assert (
                "reelserve_task_queue_seconds_count",
                frozenset({("model", "sandbox")}),
            ) not in samples

            port = free_port()
            worker = start_worker(
                data_dir, tmp_path / "worker.log", REELSERVE_WORKER_METRICS_PORT=str(port)
            )
            for task_id in queued:
                assert wait_task(client, task_id)["status"] == "completed"
            samples = scrape(client)
            assert value(samples, "reelserve_queue_depth", model="sandbox") == 0
            assert value(samples, "reelserve_tasks", model="sandbox", status="completed") == 2
            assert (
                value(samples, "reelserve_tasks", model="veo3.1-fast-official", status="completed")
                == 1
            )

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as worker_metrics:
            own = scrape(worker_metrics)
        assert value(own, "reelserve_task_queue_seconds_count", model="sandbox") == 2
        # They waited at least the second before the worker started.
        assert value(own, "reelserve_task_queue_seconds_sum", model="sandbox") >= 2
        assert value(own, "reelserve_task_queue_seconds_count", model="veo3.1-fast-official") == 1
        done = {"model": "sandbox", "outcome": "completed"}
        assert value(own, "reelserve_task_run_seconds_count", **done) == 2
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()
