"""One encoder makes every envelope (issue 14), checked over real HTTP on the live server.

The same error answered by different paths (the framework's exception handlers, the status fast
path in front of them, the body limit middleware in front of both, and the OpenAI facade) has
the same bytes, and every answer's bytes are exactly what `domain.wire` makes of its content:
compact, UTF-8 unescaped, members in the contract's order, `Content-Type: application/json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import httpx
import pytest

from reelserve.api.errors import ErrorType
from reelserve.domain import wire
from reelserve.domain.errors import TYPE_BY_STATUS, PayloadTooLarge, error_type
from tests.support import LiveServer, make_settings

ID = "tâche-ç"  # not ASCII: an escaping encoder would write \u00e2
QUOTED = quote(ID, safe="")
LIMIT = 4096


def envelope_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error envelope of `response`, after checking its bytes are the one encoder's."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload: dict[str, Any] = json.loads(response.content)
    assert response.content == wire.dumps(payload)
    assert list(payload) == ["code", "error"] and payload["code"] == status
    assert list(payload["error"]) == ["message", "type", "param"]
    return payload


def test_a_401_has_the_same_bytes_on_every_path(anon: httpx.Client) -> None:
    answers = [
        anon.get(f"/v1/tasks/{QUOTED}"),  # the status fast path
        anon.get("/v1/tasks"),  # a route, through the exception handler
        anon.post(f"/v1/tasks/{QUOTED}/cancel"),
        anon.get("/v1/videos"),  # the OpenAI facade
        anon.get(f"/v1/videos/{QUOTED}"),
    ]
    for response in answers:
        envelope_of(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    assert len({r.content for r in answers}) == 1


def test_a_404_and_a_400_have_the_same_bytes_from_the_fast_path_and_a_route(
    client: httpx.Client,
) -> None:
    fast, route = client.get(f"/v1/tasks/{QUOTED}"), client.post(f"/v1/tasks/{QUOTED}/cancel")
    error = envelope_of(fast, 404)["error"]
    assert fast.content == route.content
    assert error == {
        "message": f'no task "{ID}" found',
        "type": "invalid_request_error",
        "param": "task_id",
    }
    assert ID.encode() in fast.content

    nul_fast, nul_route = client.get("/v1/tasks/a%00b"), client.post("/v1/tasks/a%00b/cancel")
    assert envelope_of(nul_fast, 400)["error"]["param"] == "task_id"
    assert nul_fast.content == nul_route.content


def test_a_facade_error_is_the_same_envelope(client: httpx.Client) -> None:
    error = envelope_of(client.get(f"/v1/videos/{QUOTED}"), 404)["error"]
    assert error == {
        "message": f'no video "{ID}" found',
        "type": "invalid_request_error",
        "param": "video_id",
    }
    unknown = client.get("/v1/nothing-here")  # the framework's own 404, for comparison
    assert envelope_of(unknown, 404)["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    data: Path = tmp_path_factory.mktemp("envelope") / "data"
    live = LiveServer(make_settings(data, max_body_bytes=LIMIT), run_worker=False).start()
    yield live, live.mint("test")
    live.stop()


def test_the_413_of_the_middleware_is_the_same_envelope(
    small_limit: tuple[LiveServer, str],
) -> None:
    live, key = small_limit
    body = b"{" + b" " * (LIMIT * 2) + b"}"
    json_type = {"Content-Type": "application/json"}

    def chunked() -> Iterator[bytes]:
        yield body  # no Content-Length: refused while the body streams in

    with live.client(key) as c:
        answers = [
            c.post("/v1/videos/generations", content=body, headers=json_type),
            c.post("/v1/videos", content=body, headers=json_type),  # the facade's route
            c.post("/v1/videos/generations", content=chunked(), headers=json_type),
        ]
        small = c.post("/v1/videos/generations", content=b"{}", headers=json_type)
    for response in answers:
        envelope_of(response, 413)
    assert len({r.content for r in answers}) == 1
    refused = PayloadTooLarge(f"request body is larger than the limit of {LIMIT} bytes")
    assert answers[0].content == wire.error_of(refused)
    # A handler's 400 on the same server: the same members in the same order, the same encoder.
    assert envelope_of(small, 400)["error"]["type"] == refused.type


def test_the_documented_types_are_the_tables() -> None:
    """The OpenAPI document's `type` enum holds every type the table can give."""
    given = {error_type(status) for status in range(400, 600)}
    assert given == {*TYPE_BY_STATUS.values(), "invalid_request_error", "server_error"}
    assert given <= set(get_args(ErrorType))
