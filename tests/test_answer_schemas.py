"""The answers schemathesis cannot reach are the ones the OpenAPI document describes.

Schemathesis (tests/test_openapi.py) drives the server with one ordinary key without limits, so
it never sees a key's ledger entries, its limits, a 402 or a 429. Here a test key with a budget
and a rate does, over real HTTP on SQLite and PostgreSQL, and each answer is validated against
the schema the document gives for its route and status (the admin routes' answers are checked
the same way in tests/test_admin_api.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from reelserve.cli.keys import mint_key_with_webhook_secret
from tests.support import LiveServer, submit, wait_task


def _validate(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """`response` is what the document says `method path` answers with its status."""
    answers = document["paths"][path][method]["responses"]
    assert str(response.status_code) in answers, (method, path, response.status_code)
    schema = answers[str(response.status_code)]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    validator.validate(response.json())


def test_usage_estimates_402_and_429_match_the_document(server: LiveServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    changes = {"rate_per_minute": 2, "budget": 1.0, "models": ["sandbox", "veo3.1-fast-official"]}
    key, _ = asyncio.run(
        mint_key_with_webhook_secret(server.settings, "test", "schemas", changes=changes)
    )
    veo = {"model": "veo3.1-fast-official", "prompt": "priced", "duration": 4}
    with server.client(key) as c:
        estimate = c.post("/v1/videos/estimates", json=veo)
        _validate(document, "post", "/v1/videos/estimates", estimate)
        cost = estimate.json()["data"]["estimated_cost"]
        assert 0 < cost <= 1.0 and estimate.json()["data"]["affordable"] is True

        task = submit(c, veo)  # reserves `cost`, charged it once completed
        assert wait_task(c, task)["status"] == "completed"
        usage = c.get("/v1/usage")
        _validate(document, "get", "/v1/usage", usage)
        data = usage.json()["data"]
        assert data["limits"] == {
            "max_running": None,
            "rate_per_minute": 2,
            "budget": 1.0,
            "models": ["sandbox", "veo3.1-fast-official"],
        }
        assert data["test"] is True
        assert [e["kind"] for e in data["entries"]] == ["settle", "reserve"]
        assert data["balance"]["spent"] == cost

        over = {**veo, "duration": 8, "resolution": "1080p"}
        refused = c.post("/v1/videos/generations", json=over)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["type"] == "payment_required"
        _validate(document, "post", "/v1/videos/generations", refused)
        unaffordable = c.post("/v1/videos/estimates", json=over)
        _validate(document, "post", "/v1/videos/estimates", unaffordable)
        assert unaffordable.json()["data"]["affordable"] is False

        submit(c, {"model": "sandbox", "prompt": "the second of the minute", "duration": 1})
        limited = c.post("/v1/videos/generations", json={"model": "sandbox", "prompt": "third"})
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["Retry-After"]) >= 1
        _validate(document, "post", "/v1/videos/generations", limited)

        # A configured model the key may not use: the same 403 as a submit's.
        denied = c.post("/v1/videos/estimates", json={**veo, "model": "veo3.1-quality-official"})
        assert denied.status_code == 403, denied.text
        assert denied.json()["error"]["param"] == "model"
        _validate(document, "post", "/v1/videos/estimates", denied)
