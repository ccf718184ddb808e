"""POST /v1/videos/estimates over real HTTP on SQLite and PostgreSQL: the estimate a submit of
the same body would reserve, whether the key can afford it now; checked exactly as a submit
(the same status, type and param for every refusal); queues and reserves nothing. And
`reelserve keys show` prints the ledger's spent, reserved and left."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from reelserve.cli.keys import mint_key_with_webhook_secret
from tests.support import LiveServer, submit, wait_task

FAST = "veo3.1-fast-official"
QUALITY = "veo3.1-quality-official"


def mint(server: LiveServer, mode: str = "test", **limits: Any) -> str:
    return asyncio.run(
        mint_key_with_webhook_secret(server.settings, mode, "estimates", changes=limits)
    )[0]


def estimate(client: httpx.Client, body: object) -> dict[str, Any]:
    response = client.post("/v1/videos/estimates", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.mark.parametrize(
    ("body", "cost"),
    [
        # Fast 720p: the Gemini API's 0.10/s with audio is the worst case (Vertex: 0.08 without).
        ({"model": FAST, "prompt": "p", "duration": 4}, 0.4),
        ({"model": FAST, "prompt": "p", "duration": 8, "sample_count": 3}, 2.4),
        ({"model": FAST, "prompt": "p", "duration": 8, "resolution": "4k"}, 2.4),
        ({"model": QUALITY, "prompt": "p", "duration": 8, "resolution": "1080p"}, 3.2),
        ({"model": QUALITY, "prompt": "p", "generate_audio": True, "sample_count": 2}, 6.4),
        ({"model": "sandbox", "prompt": "p", "duration": 3}, 0.0),
    ],
)
def test_the_estimate_is_the_list_price_times_seconds_times_samples(
    server: LiveServer, test_key: str, body: dict[str, Any], cost: float
) -> None:
    with server.client(test_key) as c:
        data = estimate(c, body)
    assert data["object"] == "estimate" and data["model"] == body["model"]
    assert data["estimated_cost"] == cost and data["currency"] == "USD"
    assert data["test"] is True and data["affordable"] is True
    assert data["balance"]["budget"] is None and data["balance"]["left"] is None


def test_affordable_follows_the_balance_and_nothing_is_queued(server: LiveServer) -> None:
    key = mint(server, budget=1.0)
    body = {"model": FAST, "prompt": "p", "duration": 8}
    with server.client(key) as c:
        first = estimate(c, body)
        assert first["affordable"] is True and first["estimated_cost"] == 0.8
        assert first["balance"] == {
            "budget": 1.0,
            "reserved": 0.0,
            "spent": 0.0,
            "left": 1.0,
            "currency": "USD",
        }
        for _ in range(3):
            estimate(c, body)  # estimates reserve nothing: the submit still fits
        task_id = submit(c, body)
        after = estimate(c, body)
        assert after["affordable"] is False and after["balance"]["left"] == pytest.approx(0.2)
        listed = c.get("/v1/tasks").json()["data"]
        assert [t["id"] for t in listed] == [task_id]
        assert wait_task(c, task_id)["status"] == "completed"
        assert c.post("/v1/videos/generations", json=body).status_code == 402


@pytest.mark.parametrize(
    "body",
    [
        {"model": FAST, "prompt": "p", "duration": "8"},
        {"model": FAST, "prompt": "p", "duration": 5},
        {"model": FAST, "prompt": "p", "duration": 4, "resolution": "1080p"},
        {"model": "nope", "prompt": "p"},
        {"model": FAST, "prompt": "   "},
        {"model": FAST, "prompt": "p", "sample_count": 9},
        {"model": FAST, "prompt": "p", "enhance_prompt": False},
        [1, 2],
    ],
)
def test_a_bad_body_is_refused_exactly_as_a_submit_refuses_it(
    server: LiveServer, test_key: str, body: object
) -> None:
    with server.client(test_key) as c:
        refused = c.post("/v1/videos/estimates", json=body)
        as_submit = c.post("/v1/videos/generations", json=body)
    assert refused.status_code == as_submit.status_code == 400
    assert refused.json() == as_submit.json()


def test_a_model_the_key_may_not_use_and_an_admin_key_are_403s(server: LiveServer) -> None:
    key = mint(server, models=["sandbox"])
    body = {"model": FAST, "prompt": "p", "duration": 4}
    with server.client(key) as c:
        refused = c.post("/v1/videos/estimates", json=body)
        assert refused.status_code == 403
        assert refused.json() == c.post("/v1/videos/generations", json=body).json()
    admin = asyncio.run(
        mint_key_with_webhook_secret(server.settings, "live", "admin", changes={}, admin=True)
    )[0]
    with server.client(admin) as a:
        assert a.post("/v1/videos/estimates", json=body).status_code == 403
    with server.client() as anon:
        assert anon.post("/v1/videos/estimates", json=body).status_code == 401


@pytest.mark.slow
def test_keys_show_prints_spent_reserved_and_left_from_the_ledger(server: LiveServer) -> None:
    key = mint(server, budget=2.0)
    with server.client(key) as c:
        done = submit(c, {"model": FAST, "prompt": "p", "duration": 8})
        assert wait_task(c, done)["status"] == "completed"
        prefix = key[:12]
    env = {
        **os.environ,
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_DATABASE_URL": server.settings.resolved_database_url,
    }
    data_dir = str(server.settings.data_dir)
    shown = subprocess.run(
        [sys.executable, "-m", "reelserve", "keys", "show", prefix, "--data-dir", data_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(": ", 1) for line in shown.stdout.strip().splitlines())
    assert fields["budget"] == "2" and fields["currency"] == "USD"
    assert fields["spent"] == "0.8" and fields["reserved"] == "0" and fields["left"] == "1.2"
