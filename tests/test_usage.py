"""GET /v1/usage on SQLite and PostgreSQL: sandbox tasks are recorded at cost 0, per caller.

(Paid usage, with prices from the settings, is tested with the Veo provider in
tests/test_google_veo.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx
import pytest

from tests.support import LiveServer, submit, wait_task


def _usage(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.mark.slow
def test_sandbox_usage_is_recorded_per_key_at_no_cost(server: LiveServer) -> None:
    key = server.mint("test", "usage-a")
    other = server.mint("test", "usage-b")
    with server.client(key) as c, server.client(other) as o:
        assert _usage(c) == {
            "object": "usage",
            "since": None,
            "until": None,
            "models": [],
            "totals": [],
            "routes": [],
            "test": True,
            "balance": {
                "budget": None,
                "reserved": 0.0,
                "spent": 0.0,
                "left": None,
                "currency": "USD",
            },
            "entries": [],
            "limits": {
                "max_running": None,
                "rate_per_minute": None,
                "budget": None,
                "models": None,
            },
        }
        started = time.time()
        ids = [
            submit(c, {"model": "sandbox", "prompt": "one", "duration": 1}),
            submit(c, {"model": "sandbox", "prompt": "two", "duration": 2, "sample_count": 2}),
            submit(c, {"model": "veo3.1-fast-official", "prompt": "on the sandbox", "duration": 4}),
        ]
        for task_id in ids:
            assert wait_task(c, task_id)["status"] == "completed"
        data = _usage(c)
        by_model = {m["model"]: m for m in data["models"]}
        assert by_model["sandbox"] == {
            "model": "sandbox",
            "tasks": 2,
            "videos": 3,
            "video_seconds": 5.0,
            "cost": 0.0,
            "currency": "USD",
        }
        assert by_model["veo3.1-fast-official"]["video_seconds"] == 4.0
        assert by_model["veo3.1-fast-official"]["cost"] == 0.0
        # A test key's tasks all ran on the sandbox route, whatever their model.
        by_route = {(r["model"], r["route"]): r["tasks"] for r in data["routes"]}
        assert by_route == {("sandbox", "sandbox"): 2, ("veo3.1-fast-official", "sandbox"): 1}
        assert data["totals"] == [
            {"currency": "USD", "tasks": 3, "videos": 4, "video_seconds": 9.0, "cost": 0.0}
        ]
        # Another key sees only its own usage.
        assert _usage(o)["models"] == []
        # The time range: [since, until).
        assert _usage(c, until=int(started) - 60)["models"] == []
        window = _usage(c, since=int(started) - 1, until=int(time.time()) + 60)
        assert window["since"] == int(started) - 1
        assert sum(m["tasks"] for m in window["models"]) == 3
        assert _usage(c, since=int(time.time()) + 60)["models"] == []


def test_usage_rows_are_idempotent_and_only_completed_tasks_count(server: LiveServer) -> None:
    key = server.mint("test", "usage-c")
    with server.client(key) as c:
        done = submit(c, {"model": "sandbox", "prompt": "kept", "duration": 1})
        assert wait_task(c, done)["status"] == "completed"
        cancelled = submit(c, {"model": "sandbox", "prompt": "dropped", "duration": 20})
        c.post(f"/v1/tasks/{cancelled}/cancel")
        assert wait_task(c, cancelled)["status"] == "cancelled"
        assert [m["tasks"] for m in _usage(c)["models"]] == [1]

    # A second write of the same task (a resumed attempt) changes nothing.
    from reelserve.store.db import create_engine
    from reelserve.store.usage import UsageRecord, UsageStore

    async def _again() -> tuple[bool, UsageRecord | None]:
        engine = create_engine(server.settings.resolved_database_url)
        store = UsageStore(engine)
        try:
            first = await store.get(done)
            assert first is not None
            inserted = await store.record(dataclasses.replace(first, cost=99.0, videos=7))
            return inserted, await store.get(done)
        finally:
            await engine.dispose()

    inserted, after = asyncio.run(_again())
    assert inserted is False
    assert after is not None and after.cost == 0.0 and after.videos == 1
    assert after.provider == "sandbox" and after.credential is None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "-5"}, "until"),
        ({"since": "nan"}, "since"),
        ({"since": "100", "until": "100"}, "until"),
        ({"since": "200", "until": "100"}, "until"),
    ],
)
def test_bad_time_range_is_a_400(server: LiveServer, params: dict[str, str], param: str) -> None:
    with server.client(server.mint("test")) as c:
        response = c.get("/v1/usage", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


def test_usage_needs_a_key(server: LiveServer) -> None:
    with server.client() as anon:
        response = anon.get("/v1/usage")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
