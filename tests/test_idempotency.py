"""`Idempotency-Key` on submit, over real HTTP on both engines: a retried submit returns the first
task for 24 hours, another body under the same key is a 409, keys of different API keys never
collide, and concurrent submits with one key create exactly one task."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from reelserve.store.db import create_engine
from tests.support import LiveServer, submit

BODY = {"model": "sandbox", "prompt": "a lighthouse in fog", "duration": 1, "seed": 3}


def fresh_key() -> dict[str, str]:
    return {"Idempotency-Key": f"order-{secrets.token_hex(8)}"}


def tasks_with_prompt(client: httpx.Client, prompt: str) -> list[str]:
    listed = client.get("/v1/tasks", params={"limit": 100}).json()["data"]
    return [t["id"] for t in listed if t["id"] and prompt_of(client, t["id"]) == prompt]


def prompt_of(client: httpx.Client, task_id: str) -> str | None:
    # the task view has no prompt; the OpenAI facade's video object does
    response = client.get(f"/v1/videos/{task_id}")
    return response.json().get("prompt") if response.status_code == 200 else None


def test_a_retried_submit_returns_the_first_task(client: httpx.Client) -> None:
    headers = fresh_key()
    prompt = f"replay {secrets.token_hex(4)}"
    first = submit(client, {**BODY, "prompt": prompt}, headers=headers)
    again = client.post("/v1/videos/generations", json={**BODY, "prompt": prompt}, headers=headers)
    assert again.status_code == 200
    assert again.json() == {"code": 200, "data": [{"status": "submitted", "task_id": first}]}
    # the same body with its members in another order is the same request
    reordered = dict(reversed(list({**BODY, "prompt": prompt}.items())))
    assert submit(client, reordered, headers=headers) == first
    assert tasks_with_prompt(client, prompt) == [first]
    # without the header, the same body is a new task
    assert submit(client, {**BODY, "prompt": prompt}) != first


def test_the_same_key_with_another_body_is_a_409(client: httpx.Client) -> None:
    headers = fresh_key()
    first = submit(client, BODY, headers=headers)
    for changed in ({**BODY, "prompt": "another prompt"}, {**BODY, "seed": 4}):
        response = client.post("/v1/videos/generations", json=changed, headers=headers)
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["param"] == "Idempotency-Key"
        assert error["type"] == "invalid_request_error"
        assert first in error["message"]
    # the first body still replays
    assert submit(client, BODY, headers=headers) == first


def test_keys_of_different_api_keys_do_not_collide(
    server: LiveServer, client: httpx.Client
) -> None:
    headers = fresh_key()
    mine = submit(client, BODY, headers=headers)
    with server.client(server.mint("test", "neighbour")) as other:
        theirs = submit(other, {**BODY, "prompt": "something else entirely"}, headers=headers)
        assert theirs != mine
        assert submit(other, {**BODY, "prompt": "something else entirely"}, headers=headers) == (
            theirs
        )
        assert other.get(f"/v1/tasks/{mine}").status_code == 404
    assert submit(client, BODY, headers=headers) == mine


def test_concurrent_submits_with_one_key_create_one_task(
    server: LiveServer, client: httpx.Client
) -> None:
    headers = fresh_key()
    prompt = f"race {secrets.token_hex(4)}"
    start = threading.Barrier(8)
    results: list[httpx.Response] = []
    lock = threading.Lock()
    key = client.headers["authorization"]

    def racer() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": key}, timeout=60) as c:
            start.wait()
            response = c.post(
                "/v1/videos/generations", json={**BODY, "prompt": prompt}, headers=headers
            )
        with lock:
            results.append(response)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 8
    assert [r.status_code for r in results] == [200] * 8, [r.text for r in results]
    ids = {r.json()["data"][0]["task_id"] for r in results}
    assert len(ids) == 1
    assert tasks_with_prompt(client, prompt) == list(ids)


def test_after_24_hours_the_key_names_a_new_task(server: LiveServer, client: httpx.Client) -> None:
    headers = fresh_key()
    first = submit(client, BODY, headers=headers)

    async def age(task_id: str, seconds: float) -> None:
        engine = create_engine(server.settings.resolved_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE tasks SET created_at = created_at - :s WHERE id = :id"),
                    {"s": seconds, "id": task_id},
                )
        finally:
            await engine.dispose()

    asyncio.run(age(first, 23 * 3600))
    assert submit(client, BODY, headers=headers) == first  # still inside the window
    asyncio.run(age(first, 2 * 3600))  # now 25 hours old
    second = submit(client, {**BODY, "prompt": "a new day"}, headers=headers)
    assert second != first
    assert submit(client, {**BODY, "prompt": "a new day"}, headers=headers) == second
    assert client.get(f"/v1/tasks/{first}").status_code == 200  # the old task is untouched


@pytest.mark.parametrize(
    ("value", "expected"), [("", "1 to 255 characters"), ("k" * 256, "1 to 255 characters")]
)
def test_a_malformed_key_is_a_400(client: httpx.Client, value: str, expected: str) -> None:
    response = client.post("/v1/videos/generations", json=BODY, headers={"Idempotency-Key": value})
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == "Idempotency-Key" and expected in error["message"]


def test_replays_do_not_wait_for_or_disturb_the_task(client: httpx.Client) -> None:
    """A replay after the task finished returns the same, finished task."""
    headers = fresh_key()
    first = submit(client, BODY, headers=headers)
    deadline = time.monotonic() + 60
    while client.get(f"/v1/tasks/{first}").json()["data"]["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert submit(client, BODY, headers=headers) == first
    assert client.get(f"/v1/tasks/{first}").json()["data"]["status"] == "completed"
