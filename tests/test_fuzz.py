"""No input produces a 500: random JSON bodies, fields and query strings over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelserve.domain import wire
from tests.support import LiveServer, make_settings

FIELDS = [
    "model", "prompt", "negative_prompt", "duration", "aspect_ratio", "resolution",
    "first_frame_image", "last_frame_image", "seed", "sample_count", "generate_audio",
    "person_generation", "resize_mode", "enhance_prompt", "webhook_url",
]  # fmt: skip
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["16:9", "9:16", "4K", "pad", "crop", "disallow", "sandbox", "data:"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
BODIES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), JSON, max_size=8)


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    # No worker: accepted tasks just wait, so the fuzzing costs no rendering.
    live = LiveServer(
        make_settings(tmp_path_factory.mktemp("fuzz") / "data"), run_worker=False
    ).start()
    yield live, live.mint("test")
    live.stop()


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    payload = response.json()
    assert payload["code"] == response.status_code
    if response.status_code >= 400:
        assert list(payload["error"]) == ["message", "type", "param"]
        assert response.content == wire.dumps(payload)  # the one encoder's bytes


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # counts: conftest.py
@given(body=BODIES, base=st.booleans())
def test_random_submit_bodies(
    idle_server: tuple[LiveServer, str], body: dict[str, Any], base: bool
) -> None:
    live, key = idle_server
    if base:  # keep the required fields valid half the time, to reach the deeper checks
        body = {"model": "veo3.1-fast-official", "prompt": "p", **body}
    with live.client(key) as c:
        _check(c.post("/v1/videos/generations", content=json.dumps(body)))


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # counts: conftest.py
@given(
    raw=st.binary(max_size=64),
    task=st.text(max_size=40),
    query=st.dictionaries(
        st.sampled_from(["limit", "after", "status", "model", "language"]),
        st.text(max_size=12),
        max_size=4,
    ),
)
def test_random_bytes_ids_and_queries(
    idle_server: tuple[LiveServer, str], raw: bytes, task: str, query: dict[str, str]
) -> None:
    live, key = idle_server
    with live.client(key) as c:
        _check(c.post("/v1/videos/generations", content=raw))
        quoted = "/v1/tasks/" + (quote(task, safe="") or "x")
        _check(c.get(quoted, params=query))
        _check(c.get("/v1/tasks", params=query))
        _check(c.post(f"{quoted}/cancel"))
