"""Every check of the contract's request table, over real HTTP: 400, the envelope, `param` named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

BASE = {"model": "veo3.1-fast-official", "prompt": "a lighthouse at dusk"}
OMIT = object()


def body_with(**changes: Any) -> dict[str, Any]:
    body = dict(BASE)
    for name, value in changes.items():
        if value is OMIT:
            body.pop(name, None)
        else:
            body[name] = value
    return body


CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    # (case id, body, param, a phrase the message must contain)
    ("duration-string", body_with(duration="8"), "duration", 'got string "8"'),
    ("duration-float", body_with(duration=8.0), "duration", "integer"),
    ("duration-bool", body_with(duration=True), "duration", "boolean"),
    ("duration-not-allowed", body_with(duration=5), "duration", "4, 6, 8"),
    ("duration-1080p-needs-8", body_with(duration=4, resolution="1080p"), "resolution", "8"),
    ("enhance-false", body_with(enhance_prompt=False), "enhance_prompt", "only be true"),
    ("enhance-string", body_with(enhance_prompt="true"), "enhance_prompt", "boolean"),
    ("samples-5", body_with(sample_count=5), "sample_count", "between 1 and 4"),
    ("samples-0", body_with(sample_count=0), "sample_count", "between 1 and 4"),
    ("samples-string", body_with(sample_count="2"), "sample_count", "integer"),
    ("seed-negative", body_with(seed=-1), "seed", "between 0 and 4294967295"),
    ("seed-too-big", body_with(seed=4294967296), "seed", "got 4294967296"),
    ("seed-float", body_with(seed=1.5), "seed", "integer"),
    ("aspect-4:3", body_with(aspect_ratio="4:3"), "aspect_ratio", '"16:9", "9:16"'),
    ("aspect-number", body_with(aspect_ratio=1.77), "aspect_ratio", "string"),
    ("resolution-480p", body_with(resolution="480p"), "resolution", '"720p", "1080p", "4K"'),
    (
        "last-without-first",
        body_with(last_frame_image="https://example.com/a.png"),
        "last_frame_image",
        "together with first_frame_image",
    ),
    ("first-ftp", body_with(first_frame_image="ftp://x/a.png"), "first_frame_image", "ftp"),
    (
        "first-bad-data-url",
        body_with(first_frame_image="data:text/plain;base64,aGk="),
        "first_frame_image",
        "data URL",
    ),
    (
        "first-bad-base64",
        body_with(first_frame_image="data:image/png;base64,@@@"),
        "first_frame_image",
        "base64",
    ),
    ("first-number", body_with(first_frame_image=5), "first_frame_image", "string"),
    ("unknown-model", body_with(model="sora-9"), "model", "veo3.1-fast-official"),
    ("model-missing", body_with(model=OMIT), "model", "required"),
    ("model-number", body_with(model=3), "model", "string"),
    ("prompt-missing", body_with(prompt=OMIT), "prompt", "required"),
    ("prompt-empty", body_with(prompt="   "), "prompt", "empty"),
    ("prompt-too-long", body_with(prompt="x" * 8001), "prompt", "8000"),
    ("prompt-list", body_with(prompt=["a"]), "prompt", "string"),
    ("negative-too-long", body_with(negative_prompt="x" * 8001), "negative_prompt", "8000"),
    ("audio-string", body_with(generate_audio="yes"), "generate_audio", "boolean"),
    ("audio-int", body_with(generate_audio=1), "generate_audio", "boolean"),
    ("person-bad", body_with(person_generation="allow_all"), "person_generation", "disallow"),
    ("resize-bad", body_with(resize_mode="stretch"), "resize_mode", '"pad", "crop"'),
    ("webhook-ftp", body_with(webhook_url="ftp://example.com/hook"), "webhook_url", "https"),
]


@pytest.mark.parametrize(
    ("body", "param", "phrase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_contract_checks(
    client: httpx.Client, body: dict[str, Any], param: str, phrase: str
) -> None:
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    assert phrase in payload["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b"null", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
    ids=["malformed", "empty", "array", "string", "null", "not-utf8"],
)
def test_body_must_be_a_json_object(client: httpx.Client, raw: bytes, phrase: str) -> None:
    response = client.post(
        "/v1/videos/generations", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == 400
    assert phrase in response.json()["error"]["message"]


def test_resolution_is_case_insensitive(client: httpx.Client) -> None:
    for spelling in ("4k", "1080P", "720P"):
        body = body_with(resolution=spelling, duration=8)
        response = client.post("/v1/videos/generations", json=body)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"][0]["task_id"]
        client.post(f"/v1/tasks/{task_id}/cancel")


def test_unknown_fields_and_nulls_are_ignored(client: httpx.Client) -> None:
    body = body_with(not_a_field=1, negative_prompt=None, seed=None, duration=4)
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    client.post(f"/v1/tasks/{response.json()['data'][0]['task_id']}/cancel")


def test_seed_bounds_are_inclusive(client: httpx.Client) -> None:
    for seed in (0, 4294967295):
        response = client.post("/v1/videos/generations", json=body_with(seed=seed, duration=4))
        assert response.status_code == 200, response.text
        client.post(f"/v1/tasks/{response.json()['data'][0]['task_id']}/cancel")


def test_oversize_body_is_413(client: httpx.Client, server: Any) -> None:
    limit = server.settings.max_body_bytes
    response = client.post(
        "/v1/videos/generations",
        content=b"{" + b" " * (limit + 10) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_oversize_chunked_body_is_413(client: httpx.Client, server: Any) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    limit = server.settings.max_body_bytes
    chunk = b" " * (1024 * 1024)

    def body() -> Iterator[bytes]:
        yield b"{"
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b"}"

    response = client.post(
        "/v1/videos/generations", content=body(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/nothing-here" in response.json()["error"]["message"]
    response = client.delete("/v1/videos/generations")
    assert response.status_code == 405
    assert response.json()["code"] == 405


@pytest.mark.parametrize(
    "header",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer rs_test_unknown", "Token abc"],
    ids=["missing", "basic", "empty-bearer", "unknown-key", "other-scheme"],
)
def test_authentication_errors(server: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    with server.client() as c:
        for method, path in [
            ("POST", "/v1/videos/generations"),
            ("GET", "/v1/tasks/task_x"),
            ("GET", "/v1/tasks"),
            ("GET", "/v1/models"),
            ("POST", "/v1/tasks/task_x/cancel"),
        ]:
            response = c.request(method, path, headers=headers, json=BASE)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.json()["code"] == 401


def test_list_query_errors(client: httpx.Client) -> None:
    for query, param in [
        ({"limit": "abc"}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "done"}, "status"),
    ]:
        response = client.get("/v1/tasks", params=query)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    response = client.get("/v1/tasks/task_x", params={"language": "fr"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "language"
