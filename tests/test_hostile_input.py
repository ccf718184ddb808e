"""Hostile input costs no worker, no 500 and no log flood (issue 13).

Each test here reproduces one finding of the adversarial pass over the running server, over real
HTTP on loopback against SQLite and PostgreSQL (the `server` fixture), or against the real queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import task_id
from reelserve.domain.spec import MAX_PROMPT_CHARS
from reelserve.domain.task import TaskStatus
from reelserve.providers.sandbox.drawing import load_font, wrap
from reelserve.storage.base import StorageKeyError
from reelserve.storage.local import LocalStorage
from reelserve.storage.s3 import S3Storage
from reelserve.storage.signing import FileGrant, Signer, _b64
from reelserve.store.db import create_engine, upgrade
from reelserve.store.queue import FREE_RELEASES, TaskQueue
from reelserve.store.tables import tasks
from tests.databases import database_url
from tests.support import LiveServer, make_settings, sqlite_only, submit, wait_task

GENERATIONS = "/v1/videos/generations"
VIDEOS = "/v1/videos"

# -- 1. one legal prompt must not stall a sandbox worker ----------------------------------------


def test_caption_wrap_of_an_unbroken_max_length_prompt() -> None:
    """The wrap was cubic in a word without spaces (8,000 characters: about 3 hours)."""
    font = load_font(42)
    lines = wrap("a" * MAX_PROMPT_CHARS, font, 1058, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 1058 for line in lines)
    assert len(lines[0]) > 10  # lines are filled, not cut into single characters


@pytest.mark.parametrize(
    "text",
    [
        "\u0301" * MAX_PROMPT_CHARS,  # zero-width combining marks: one "line" holds them all
        " ".join(["\u0301"] * (MAX_PROMPT_CHARS // 2)),
        "a " * (MAX_PROMPT_CHARS // 2),
        "W" * 40 + " tail",
    ],
)
def test_caption_wrap_fits_whatever_the_text(text: str) -> None:
    font = load_font(42)
    lines = wrap(text, font, 1058, max_lines=3)
    assert 1 <= len(lines) <= 3
    assert all(font.getlength(line) <= 1058 for line in lines)


def test_caption_wrap_keeps_short_prompts_whole() -> None:
    font = load_font(42)
    assert wrap("a red kite  over\tgreen hills", font, 1058, max_lines=3) == [
        "a red kite over green hills"
    ]
    assert wrap("a red kite over green hills", font, 200, max_lines=3) == [
        "a red kite",
        "over",
        "green hills",
    ]
    assert wrap("a red kite over green hills", font, 150, max_lines=2) == ["a red", "kite..."]


@sqlite_only  # a rendering cost: the engine plays no part
def test_max_length_unbroken_prompt_renders(client: httpx.Client) -> None:
    """Two such submits used to fill a worker for hours; now each finishes like any other."""
    ids = [
        submit(client, {"model": "sandbox", "prompt": "a" * MAX_PROMPT_CHARS, "duration": 4})
        for _ in range(2)
    ]
    for tid in ids:
        assert wait_task(client, tid, timeout=90)["status"] == "completed"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture()
async def queue(db_url: str) -> AsyncIterator[TaskQueue]:
    engine: AsyncEngine = create_engine(db_url)
    await upgrade(engine)
    yield TaskQueue(engine)
    await engine.dispose()


async def test_releases_are_bounded(queue: TaskQueue) -> None:
    """A released attempt is refunded a few times only: a task that every worker must hand back
    (its provider ignores the stop) fails after max_attempts instead of circling forever."""
    tid = task_id()
    await queue.submit(
        task_id=tid,
        api_key_id="key_a",
        model="sandbox",
        provider="sandbox",
        spec={"prompt": "x"},
        estimated_time=5,
    )
    max_attempts = 2
    claims = 0
    while task := await queue.claim(f"w{claims}", lease_seconds=30, max_attempts=max_attempts):
        claims += 1
        assert claims <= FREE_RELEASES + max_attempts, "the task is claimed forever"
        assert await queue.release(task.id, f"w{claims - 1}")
    assert claims == FREE_RELEASES + max_attempts
    assert await queue.fail_exhausted(max_attempts) == [tid]
    failed = await queue.get(tid)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.releases == claims and "interrupted" in (failed.error_message or "")


# -- 2. text from a client is valid UTF-8 without NUL, or a 400 naming the field ----------------


def _error(
    response: httpx.Response, status: int = 400, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    """The error member of an enveloped error answer, checked to be `status` of `type_`."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["code"] == status
    assert payload["error"]["type"] == type_
    error: dict[str, Any] = payload["error"]
    return error


def _post_raw(client: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("path", "raw", "param", "phrase"),
    [
        (GENERATIONS, rb'{"model":"sandbox","prompt":"a\ud800b"}', "prompt", "lone surrogate"),
        (GENERATIONS, rb'{"model":"\udfff","prompt":"p"}', "model", "lone surrogate"),
        (GENERATIONS, rb'{"model":"sandbox","prompt":"a\u0000b"}', "prompt", "NUL"),
        (GENERATIONS, rb'{"model":"sandbox","prompt":"p","x":["\ud800"]}', "x[0]", "surrogate"),
        (GENERATIONS, rb'{"model":"sandbox","prompt":"p","\ud800":1}', None, "member name"),
        (VIDEOS, rb'{"model":"\ud800","prompt":"p"}', "model", "lone surrogate"),
        (VIDEOS, rb'{"model":"sandbox","prompt":"a\ud800b"}', "prompt", "lone surrogate"),
        (VIDEOS, rb'{"model":"sandbox","prompt":"p","seed":"\u0000"}', "seed", "NUL"),
    ],
)
def test_invalid_text_in_a_body_is_a_400_naming_the_field(
    client: httpx.Client, path: str, raw: bytes, param: str | None, phrase: str
) -> None:
    error = _error(_post_raw(client, path, raw))
    assert error["param"] == param
    assert phrase in error["message"] and "UTF-8" in error["message"]


def test_a_nul_in_a_form_field_is_a_400(client: httpx.Client) -> None:
    response = client.post(VIDEOS, data={"model": "sandbox", "prompt": "a\x00b", "seconds": "4"})
    error = _error(response)
    assert error["param"] == "prompt" and "NUL" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/v1/tasks/a%00b", "task_id"),
        ("GET", "/v1/tasks/a%00b?language=en", "task_id"),
        ("GET", "/v1/tasks/a%00b/events", "task_id"),
        ("GET", "/v1/tasks/a%00b/webhooks", "task_id"),
        ("POST", "/v1/tasks/a%00b/cancel", "task_id"),
        ("GET", "/v1/tasks?after=%00", "after"),
        ("GET", "/v1/tasks?model=a%00", "model"),
        ("GET", "/v1/tasks?status=%00", "status"),
        ("GET", "/v1/videos/a%00b", "video_id"),
        ("GET", "/v1/videos/a%00b/content", "video_id"),
        ("DELETE", "/v1/videos/a%00b", "video_id"),
        ("GET", "/v1/videos?after=%00", "after"),
        ("GET", "/v1/usage?since=%00", "since"),
        ("GET", "/v1/tasks/x?language=%00", "language"),
        ("GET", "/v1/tasks?a%00=1", None),
    ],
)
def test_a_nul_in_a_path_or_query_is_a_400_naming_it(
    client: httpx.Client, method: str, path: str, param: str | None
) -> None:
    error = _error(client.request(method, path))
    assert error["param"] == param
    assert "NUL" in error["message"]


def test_text_stored_before_the_check_cannot_break_listing(
    server: LiveServer, client: httpx.Client
) -> None:
    """A task whose prompt holds a lone surrogate (accepted before client text was checked)
    used to make GET /v1/videos a 500 for its key from then on."""
    tid = submit(client, {"model": "sandbox", "prompt": "placeholder", "duration": 4})
    client.post(f"/v1/tasks/{tid}/cancel")
    wait_task(client, tid)

    async def corrupt() -> None:
        engine = create_engine(server.settings.resolved_database_url)
        try:
            async with engine.begin() as conn:
                row = (await conn.execute(sa.select(tasks.c.spec).where(tasks.c.id == tid))).one()
                spec = {**row[0], "prompt": "a\ud800b"}
                await conn.execute(tasks.update().where(tasks.c.id == tid).values(spec=spec))
        finally:
            await engine.dispose()

    asyncio.run(corrupt())
    video = client.get(f"/v1/videos/{tid}")
    assert video.status_code == 200, video.text
    assert video.json()["prompt"] == "a?b"
    listing = client.get("/v1/videos", params={"limit": 100})
    assert listing.status_code == 200, listing.text
    assert tid in {v["id"] for v in listing.json()["data"]}


# -- 3. file tokens and storage keys ------------------------------------------------------------


def _forged(key: str, *, expires_at: int = 2**40) -> str:
    """A token for `key` signed with the test servers' secret (as a holder of the secret could
    make one), built by hand because `Signer.sign` itself refuses bad keys now."""
    signer = Signer(make_settings(Path("unused")).signing_key())
    payload = json.dumps({"e": expires_at, "k": key, "t": "video/mp4"}, separators=(",", ":"))
    body = _b64(payload.encode())
    return f"{body}.{_b64(signer._mac(body.encode()))}"


@pytest.mark.parametrize(
    "token",
    ["%C3%A9", "%C3%A9.%C3%A9", "abc.%E2%82%AC", "a.b", "a..b", "x" * 5000, "%F0%9F%8E%AC.x"],
)
def test_a_bad_file_token_is_a_403_without_a_traceback(
    anon: httpx.Client, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for method in ("GET", "HEAD"):
            response = anon.request(method, f"/v1/files/{token}")
            assert response.status_code == 403, response.text
        _error(anon.get(f"/v1/files/{token}"), 403, "permission_error")
    assert not [r for r in caplog.records if r.exc_info], "a client's token logged a traceback"


@pytest.mark.parametrize("key", [".", "", "a\x00b", "..", "task_x/../../etc/passwd", "/etc/hosts"])
def test_a_signed_token_naming_a_bad_key_is_refused(
    anon: httpx.Client, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        _error(anon.get(f"/v1/files/{_forged(key)}"), 403, "permission_error")
    assert not [r for r in caplog.records if r.exc_info]


@sqlite_only  # file serving: the engine plays no part
def test_a_signed_token_naming_a_directory_is_gone(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """A task's files live under its id, a directory on local storage: never served."""
    tid = submit(client, {"model": "sandbox", "prompt": "a directory", "duration": 1})
    assert wait_task(client, tid)["status"] == "completed"
    for key in (tid, f"{tid}/inputs", f"{tid}/0.mp4/x"):
        response = anon.get(f"/v1/files/{_forged(key)}")
        assert response.status_code == 410, response.text
        assert response.json()["error"]["message"] == "this file is no longer available"


BAD_KEYS = [".", "", "..", "a\x00b", "/abs", "a//b", "a/", "a/./b", "a/../b", ".hidden", "é"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_storage_keys_are_checked_on_write_and_read(tmp_path: Path, key: str) -> None:
    local = LocalStorage(tmp_path / "media")
    with pytest.raises(StorageKeyError):
        local.put_bytes(key, b"x")
    with pytest.raises(StorageKeyError):
        local.read_bytes(key)
    with pytest.raises(StorageKeyError):
        local.local_path(key)
    assert local.size(key) is None
    # The S3 backend applies the same rules before any request is made (nothing listens here).
    s3 = S3Storage(
        bucket="b", endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="s"
    )
    with pytest.raises(StorageKeyError):
        s3.put_bytes(key, b"x")
    with pytest.raises(StorageKeyError):
        s3.size(key)
    with pytest.raises(StorageKeyError):
        Signer(b"secret").sign(FileGrant(key, "video/mp4", 2**40))


def test_a_directory_has_no_size(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "media")
    local.put_bytes("task_a/0.mp4", b"video")
    assert local.size("task_a/0.mp4") == 5
    assert local.size("task_a") is None and not local.exists("task_a")


# -- 4. one JSON parser with depth and number limits ----------------------------------------------


def _nested(levels: int) -> bytes:
    return b'{"model":"sandbox","prompt":"p","x":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("path", [GENERATIONS, VIDEOS])
@pytest.mark.parametrize(
    ("raw", "param", "phrase"),
    [
        (_nested(100_000), None, "deeper than"),
        (_nested(100), "x" + "[0]" * 31, "deeper than"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, None, "deeper than"),
        (b'{"model":"sandbox","prompt":"p","seed":' + b"9" * 4301 + b"}", "seed", "4301"),
        (b'{"model":"sandbox","prompt":"p","seed":1' + b"0" * 100_000 + b"}", "seed", "100001"),
        (b'{"model":"sandbox","prompt":"p","x":[0.' + b"1" * 5000 + b"]}", "x[0]", "5002"),
        (b'{"model":"sandbox","prompt":"p","seed":NaN}', None, "NaN is not a JSON number"),
        (b'{"model":"sandbox","prompt":"p","seed":-Infinity}', None, "not a JSON number"),
        ('{"model":"sandbox","prompt":"p"}'.encode("utf-16"), None, "not UTF-8"),
    ],
    ids=["deep-arrays", "depth-33", "deep-objects", "4301-digits", "huge-int", "long-float",
         "nan", "infinity", "utf-16"],
)  # fmt: skip
def test_hostile_json_is_a_400(
    client: httpx.Client, path: str, raw: bytes, param: str | None, phrase: str
) -> None:
    error = _error(_post_raw(client, path, raw))
    assert error["param"] == param
    assert phrase in error["message"], error["message"]


def test_json_within_the_limits_is_accepted(client: httpx.Client) -> None:
    """Depth 32 and 100-character numbers are fine (an unknown member is ignored)."""
    raw = _nested(31)[:-1] + b',"seed":' + b"1" * 9 + b',"y":1.' + b"5" * 98 + b"}"
    response = _post_raw(client, GENERATIONS, raw)
    assert response.status_code == 200, response.text
    client.post(f"/v1/tasks/{response.json()['data'][0]['task_id']}/cancel")


# -- 5. URLs with impossible ports or spaces; the 416 answer's type --------------------------------


@pytest.mark.parametrize(
    ("field", "url", "phrase"),
    [
        ("webhook_url", "https://example.com:0/hook", "port between 1 and 65535 (got '0')"),
        ("webhook_url", "https://example.com:99999/hook", "(got '99999')"),
        ("webhook_url", "https://example.com:+443/hook", "port between"),
        ("webhook_url", "https://exa mple.com/hook", "without spaces"),
        ("webhook_url", "https://example.com/a b", "without spaces"),
        ("webhook_url", "https://example.com/\thook", "control characters"),
        ("webhook_url", "https://[::1/hook", "well-formed URL"),
        ("first_frame_image", "http://127.0.0.1:0/a.png", "port between 1 and 65535"),
        ("first_frame_image", "http://127.0.0.1:70000/a.png", "(got '70000')"),
        ("first_frame_image", "http://127.0.0.1/a b.png", "without spaces"),
        ("first_frame_image", "http://[::1/a.png", "well-formed URL"),
    ],
)
def test_a_url_that_cannot_be_used_is_a_400_at_submit(
    client: httpx.Client, field: str, url: str, phrase: str
) -> None:
    body = {"model": "sandbox", "prompt": "p", "duration": 4, field: url}
    error = _error(client.post(GENERATIONS, json=body))
    assert error["param"] == field
    assert phrase in error["message"], error["message"]


@sqlite_only  # file serving: the engine plays no part
def test_a_416_is_an_invalid_request_error(client: httpx.Client, anon: httpx.Client) -> None:
    tid = submit(client, {"model": "sandbox", "prompt": "ranges", "duration": 1})
    video = wait_task(client, tid)["result"]["videos"][0]
    size = video["size_bytes"]
    response = anon.get(video["url"][0], headers={"Range": f"bytes={size + 10}-"})
    error = _error(response, 416)
    assert error["param"] == "Range" and response.headers["content-range"] == f"bytes */{size}"


# -- 9. no answer outside the envelope ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/tasks/%2F", "/v1/tasks/", "/v1/models/", "/v1/videos/"])
def test_a_trailing_slash_is_a_404_envelope_not_a_redirect(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
