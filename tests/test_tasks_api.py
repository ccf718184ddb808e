"""Tasks, files, keys and models over real HTTP: isolation, signed links, Range, cancel, paging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support import (
    LiveServer,
    make_settings,
    sqlite_only,
    static_server,
    submit,
    wait_task,
)

QUICK = {"model": "sandbox", "prompt": "a red kite over green hills", "duration": 1}


@pytest.fixture(scope="module")
def finished(client_module: httpx.Client) -> dict[str, Any]:
    task_id = submit(client_module, {**QUICK, "generate_audio": True, "seed": 7})
    task = wait_task(client_module, task_id)
    assert task["status"] == "completed", task
    return task


@pytest.fixture(scope="module")
def client_module(server: LiveServer, test_key: str) -> Iterator[httpx.Client]:
    with server.client(test_key) as c:
        yield c


def test_completed_task_view(finished: dict[str, Any]) -> None:
    assert set(finished) >= {"id", "status", "progress", "model", "result", "created", "completed"}
    assert finished["actual_time"] == finished["completed"] - finished["created"] or (
        abs(finished["actual_time"] - (finished["completed"] - finished["created"])) <= 1
    )
    assert "queue_position" not in finished
    (video,) = finished["result"]["videos"]
    assert video["seed"] == 7
    assert video["has_audio"] is True
    assert isinstance(video["url"], list) and len(video["url"]) == 1


def _closed(schema: Any) -> Any:
    """`schema` with every object closed (no member beyond its `properties`)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {name: _closed(value) for name, value in schema.items()}
    if "properties" in schema:
        closed["additionalProperties"] = False
    return closed


def test_views_are_the_documented_task_schema(
    client_module: httpx.Client, finished: dict[str, Any], tmp_path: Path
) -> None:
    """A completed and a failed task's views are what /openapi.json documents, member for
    member (clients generate code from it); a failed task's error names its type."""
    with static_server(tmp_path) as images:
        broken = {**QUICK, "first_frame_image": f"{images}/missing.png"}
        failed = wait_task(client_module, submit(client_module, broken))
    assert failed["status"] == "failed", failed
    assert set(failed["error"]) == {"code", "message", "type"}
    assert failed["error"]["code"] == "invalid_image"
    assert failed["error"]["type"] == "invalid_request_error"
    document = client_module.get("/openapi.json").json()
    schema = {
        "$ref": "#/components/schemas/TaskAnswer",
        "components": {"schemas": _closed(document["components"]["schemas"])},
    }
    for view in (finished, failed):
        jsonschema.validate({"code": 200, "data": view}, schema)
    listing = client_module.get("/v1/tasks", params={"limit": 2}).json()
    jsonschema.validate(listing, {**schema, "$ref": "#/components/schemas/TaskPage"})


def test_other_keys_see_404(server: LiveServer, finished: dict[str, Any]) -> None:
    other = server.mint("test", "intruder")
    with server.client(other) as c:
        for method, path in [
            ("GET", f"/v1/tasks/{finished['id']}"),
            ("POST", f"/v1/tasks/{finished['id']}/cancel"),
        ]:
            response = c.request(method, path)
            assert response.status_code == 404, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
        listed = c.get("/v1/tasks").json()["data"]
        assert finished["id"] not in [t["id"] for t in listed]


def test_revoked_key_is_refused(server: LiveServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reelserve.cli.main import app

    secret = server.mint("test", "to-revoke")
    with server.client(secret) as c:
        assert c.get("/v1/models").status_code == 200
        result = CliRunner().invoke(
            app,
            ["keys", "revoke", secret[:12], "--data-dir", str(server.settings.data_dir)],
            env={"REELSERVE_DATABASE_URL": server.settings.database_url or ""},
        )
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 10  # auth results are cached for a few seconds
        while c.get("/v1/models").status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted"
            time.sleep(0.25)


def test_file_download_and_range(client_module: httpx.Client, finished: dict[str, Any]) -> None:
    url = finished["result"]["videos"][0]["url"][0]
    with httpx.Client() as bare:  # no Authorization: the signed link is the credential
        full = bare.get(url)
        assert full.status_code == 200
        size = len(full.content)
        assert int(full.headers["content-length"]) == size
        assert full.headers["accept-ranges"] == "bytes"
        assert full.content[4:8] == b"ftyp"

        part = bare.get(url, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 0-99/{size}"
        assert part.content == full.content[:100]

        tail = bare.get(url, headers={"Range": "bytes=-50"})
        assert tail.status_code == 206
        assert tail.content == full.content[-50:]

        middle = bare.get(url, headers={"Range": f"bytes=100-{size + 1000}"})
        assert middle.status_code == 206
        assert middle.content == full.content[100:]

        outside = bare.get(url, headers={"Range": f"bytes={size}-"})
        assert outside.status_code == 416
        assert outside.json()["code"] == 416
        assert outside.headers["content-range"] == f"bytes */{size}"

        bad = bare.get(url, headers={"Range": "lines=1-2"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "Range"

        head = bare.head(url)
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == size


def test_tampered_links_are_refused(finished: dict[str, Any]) -> None:
    url = finished["result"]["videos"][0]["url"][0]
    base, token = url.rsplit("/", 1)
    payload, mac = token.split(".")
    thumb_payload = finished["result"]["videos"][0]["thumbnail_url"].rsplit("/", 1)[1].split(".")[0]
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    with httpx.Client() as bare:
        for forged in (
            f"{payload}.{flipped}",  # signature altered
            f"{thumb_payload}.{mac}",  # another file's payload with this signature
            f"{payload}",  # no signature
            "garbage",
        ):
            response = bare.get(f"{base}/{forged}")
            assert response.status_code == 403, (forged, response.text)
            assert response.json()["error"]["type"] == "permission_error"


def test_signed_links_expire(tmp_path: Path) -> None:
    live = LiveServer(make_settings(tmp_path / "data", result_ttl=2)).start()
    try:
        key = live.mint("test")
        with live.client(key) as c:
            task = wait_task(c, submit(c, QUICK))
            url = task["result"]["videos"][0]["url"][0]
            assert c.get(url).status_code == 200
            time.sleep(max(0.0, task["result"]["videos"][0]["expires_at"] - time.time()) + 1.1)
            expired = c.get(url)
            assert expired.status_code == 410
            assert expired.json()["code"] == 410
            assert "expired" in expired.json()["error"]["message"]
    finally:
        live.stop()


def test_cancel_finished_is_409(client_module: httpx.Client, finished: dict[str, Any]) -> None:
    response = client_module.post(f"/v1/tasks/{finished['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["code"] == 409
    assert "completed" in response.json()["error"]["message"]
    assert client_module.get(f"/v1/tasks/{finished['id']}").json()["data"]["status"] == "completed"


def test_cancel_pending_is_immediate(tmp_path: Path) -> None:
    # A server without a worker: tasks stay pending until cancelled.
    live = LiveServer(make_settings(tmp_path / "data"), run_worker=False).start()
    try:
        key = live.mint("test")
        with live.client(key) as c:
            first = submit(c, QUICK)
            second = submit(c, QUICK)
            view = c.get(f"/v1/tasks/{second}").json()["data"]
            assert view["status"] == "pending"
            assert view["queue_position"] == 1
            assert c.get(f"/v1/tasks/{first}").json()["data"]["queue_position"] == 0
            response = c.post(f"/v1/tasks/{first}/cancel")
            assert response.status_code == 200
            cancelled = response.json()["data"]
            assert cancelled["status"] == "cancelled"
            assert "completed" in cancelled and "result" not in cancelled
            assert c.get(f"/v1/tasks/{second}").json()["data"]["queue_position"] == 0
            again = c.post(f"/v1/tasks/{first}/cancel")
            assert again.status_code == 409
    finally:
        live.stop()


def test_cancel_processing_task(client_module: httpx.Client) -> None:
    task_id = submit(client_module, {**QUICK, "duration": 20, "resolution": "1080p"})
    wait_task(client_module, task_id, until=("processing",))
    response = client_module.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 200
    final = wait_task(client_module, task_id, timeout=60)
    assert final["status"] == "cancelled"
    assert "result" not in final


def test_listing_is_paged_newest_first(server: LiveServer) -> None:
    key = server.mint("test", "lister")
    with server.client(key) as c:
        ids = [submit(c, {**QUICK, "prompt": f"p{i}"}) for i in range(5)]
        for task_id in ids:
            wait_task(c, task_id)
        seen: list[str] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if after:
                params["after"] = after
            page = c.get("/v1/tasks", params=params).json()
            seen += [t["id"] for t in page["data"]]
            if not page["has_more"]:
                assert page["next_after"] is None
                break
            after = page["next_after"]
        assert seen == list(reversed(ids))
        completed = c.get("/v1/tasks", params={"status": "completed", "model": "sandbox"}).json()
        assert len(completed["data"]) == 5
        assert c.get("/v1/tasks", params={"status": "failed"}).json()["data"] == []


def test_models_listing(client_module: httpx.Client, server: LiveServer, live_key: str) -> None:
    data = client_module.get("/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    veo = by_id["veo3.1-fast-official"]
    assert veo["durations"] == [4, 6, 8]
    assert veo["resolutions"] == ["720p", "1080p", "4K"]
    assert veo["aspect_ratios"] == ["16:9", "9:16"]
    assert veo["audio"] is True
    assert veo["provider"] == "google_veo"
    assert veo["available"] is True and veo["runs_on"] == "sandbox"
    with server.client(live_key) as c:
        live = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert live["veo3.1-fast-official"]["available"] is False
    assert live["veo3.1-fast-official"]["runs_on"] == "google_veo"
    assert live["sandbox"]["available"] is True


def test_models_queued_for_remote_workers_are_available(tmp_path: Path) -> None:
    """A model whose provider runs only on workers elsewhere (`remote_providers`) is accepted
    at submit, so /v1/models shows it available, running on remote workers."""
    live = LiveServer(
        make_settings(tmp_path / "data", remote_providers=["google_veo"]), run_worker=False
    ).start()
    try:
        with live.client(live.mint("live")) as c:
            models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            veo = models["veo3.1-fast-official"]
            assert veo["available"] is True and veo["runs_on"] == "remote workers"
            assert veo["provider"] == "google_veo"
            assert models["sandbox"]["runs_on"] == "sandbox"  # run by this server
            body = {"model": "veo3.1-fast-official", "prompt": "queued", "duration": 4}
            task_id = submit(c, body)
            assert c.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == "pending"
        with live.client(live.mint("test")) as c:
            models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            assert models["veo3.1-fast-official"]["runs_on"] == "sandbox"
    finally:
        live.stop()


def test_live_key_on_unconfigured_provider(server: LiveServer, live_key: str) -> None:
    with server.client(live_key) as c:
        response = c.post(
            "/v1/videos/generations", json={**QUICK, "model": "veo3.1-fast-official", "duration": 4}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "model"
        assert "REELSERVE_GOOGLE" in error["message"]
        assert "test key" in error["message"]
        # the sandbox model runs for live keys too
        task = wait_task(c, submit(c, QUICK))
        assert task["status"] == "completed"


@sqlite_only  # rendering: the engine plays no part
def test_sample_count_gives_distinct_videos(client_module: httpx.Client) -> None:
    task = wait_task(client_module, submit(client_module, {**QUICK, "sample_count": 3, "seed": 40}))
    videos = task["result"]["videos"]
    assert [v["seed"] for v in videos] == [40, 41, 42]
    bodies = {client_module.get(v["url"][0]).content for v in videos}
    assert len(bodies) == 3


def test_health_ready_metrics_docs(anon: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").json() == {"status": "ready"}
    metrics = anon.get("/metrics")
    assert metrics.status_code == 200
    assert "reelserve_tasks" in metrics.text
    assert "reelserve_http_requests_total" in metrics.text
    assert anon.get("/docs").status_code == 200
    spec = anon.get("/openapi.json").json()
    assert "/v1/videos/generations" in spec["paths"]
    assert "GenerationRequest" in spec["components"]["schemas"]


def test_idempotency_key(client_module: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"idem-{time.time_ns()}"}
    first = submit(client_module, QUICK, headers=headers)
    second = submit(client_module, QUICK, headers=headers)
    assert first == second
    conflict = client_module.post(
        "/v1/videos/generations", json={**QUICK, "prompt": "something else"}, headers=headers
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["param"] == "Idempotency-Key"
    assert submit(client_module, QUICK) != first
