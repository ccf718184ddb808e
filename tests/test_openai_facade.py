"""The OpenAI-compatible `/v1/videos` facade, driven by the official `openai` Python package over
real HTTP (base_url = the server's `/v1`, api_key = a reelserve test key): create, retrieve and
poll, list, download the MP4 and the thumbnail, delete, `input_reference` uploads, and errors
surfacing as the package's own exception types."""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reelserve.api.openai.mapping import openai_error
from reelserve.domain.errors import Conflict, InvalidRequest, NotFound
from reelserve.media.video import decode_frames, probe_video
from tests.support import LiveServer, make_settings

# The package marks its Videos API deprecated (OpenAI's hosted Sora API is being retired);
# the wire format is what this facade speaks, so the warning is not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

COLOURS = [(220, 40, 40), (40, 190, 70), (40, 70, 220), (235, 210, 40)]


@pytest.fixture()
def oa(server: LiveServer, test_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=test_key, max_retries=0)
    yield client
    client.close()


def finished(oa: openai.OpenAI, video_id: str) -> openai.types.Video:
    video = oa.videos.poll(video_id, poll_interval_ms=100)
    assert video.status in ("completed", "failed")
    return video


def test_create_poll_download_list_delete(
    oa: openai.OpenAI, client: httpx.Client, tmp_path: Path
) -> None:
    prompt = f"a hot-air balloon over a valley {secrets.token_hex(3)}"
    created = oa.videos.create(prompt=prompt, model="sora-2", seconds="4", size="1280x720")
    assert created.object == "video"
    assert created.status in ("queued", "in_progress")
    assert created.id.startswith("task_")
    assert (created.seconds, created.size, created.prompt) == ("4", "1280x720", prompt)
    assert created.model == "veo3.1-fast-official"  # sora-2 maps onto the configured model
    assert created.completed_at is None and created.error is None

    video = finished(oa, created.id)
    assert video.status == "completed", video.error
    assert video.progress == 100
    assert video.completed_at is not None and video.completed_at >= video.created_at
    assert video.expires_at is not None and video.expires_at > time.time()
    assert oa.videos.retrieve(created.id) == video

    # the video is a task of the native API, under the same id
    native = client.get(f"/v1/tasks/{created.id}").json()["data"]
    assert native["status"] == "completed" and native["model"] == "veo3.1-fast-official"
    assert native["result"]["videos"][0]["expires_at"] == video.expires_at

    mp4 = oa.videos.download_content(created.id)
    assert mp4.response.headers["content-type"] == "video/mp4"
    assert mp4.content[4:8] == b"ftyp"
    path = tmp_path / "video.mp4"
    mp4.write_to_file(path)
    info = probe_video(path)
    assert (info.width, info.height) == (1280, 720)
    assert abs(info.duration - 4) < 0.1
    assert info.frame_count == 96

    thumb = oa.videos.download_content(created.id, variant="thumbnail")
    assert thumb.response.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert image.format == "JPEG" and image.size[0] / image.size[1] == pytest.approx(16 / 9)

    # listed newest first, with the page markers OpenAI's client follows
    other = oa.videos.create(prompt=prompt + " again", model="sandbox", seconds="1")
    page = oa.videos.list(limit=1)
    assert [v.id for v in page.data] == [other.id]
    assert page.has_more is True and page.last_id == other.id
    following = page.get_next_page()
    assert [v.id for v in following.data] == [created.id]
    assert created.id in [v.id for v in oa.videos.list(limit=100).data]

    # delete: the files go, the video and its task are no longer found or listed
    link = native["result"]["videos"][0]["url"][0]
    assert client.get(link).status_code == 200
    deleted = oa.videos.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError) as missing:
        oa.videos.retrieve(created.id)
    assert missing.value.param == "video_id"
    assert missing.value.body == {
        "message": f'no video "{created.id}" found',
        "type": "invalid_request_error",
        "param": "video_id",
    }
    assert client.get(f"/v1/tasks/{created.id}").status_code == 404
    assert client.get(link).status_code == 410
    assert created.id not in [v.id for v in oa.videos.list(limit=100).data]
    with pytest.raises(openai.NotFoundError):
        oa.videos.delete(created.id)
    finished(oa, other.id)


def test_delete_of_a_running_video_asks_it_to_stop_first(oa: openai.OpenAI) -> None:
    video = oa.videos.create(prompt="a long take of the sea", model="sandbox", seconds="20")
    deadline = time.monotonic() + 60
    while oa.videos.retrieve(video.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(openai.ConflictError) as running:
        oa.videos.delete(video.id)
    assert "cancellation was requested" in str(running.value.message)
    stopped = finished(oa, video.id)
    assert stopped.status == "failed"
    assert stopped.error is not None and stopped.error.code == "cancelled"
    with pytest.raises(openai.ConflictError):  # a cancelled video has no content
        oa.videos.download_content(video.id)
    assert oa.videos.delete(video.id).deleted is True


def quadrants(width: int, height: int) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = COLOURS[0]
    arr[: height // 2, width // 2 :] = COLOURS[1]
    arr[height // 2 :, : width // 2] = COLOURS[2]
    arr[height // 2 :, width // 2 :] = COLOURS[3]
    return Image.fromarray(arr)


def test_input_reference_upload_is_the_first_frame(oa: openai.OpenAI, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    quadrants(720, 1280).save(buffer, format="PNG")
    video = oa.videos.create(
        prompt="the picture comes alive",
        model="sandbox",
        seconds="1",
        size="720x1280",
        input_reference=("frame.png", buffer.getvalue(), "image/png"),
    )
    done = finished(oa, video.id)
    assert done.status == "completed", done.error
    path = tmp_path / "i2v.mp4"
    oa.videos.download_content(video.id).write_to_file(path)
    first = next(decode_frames(path))
    assert first.shape == (1280, 720, 3)
    for (y, x), colour in zip(
        [(320, 180), (320, 540), (960, 180), (960, 540)], COLOURS, strict=True
    ):
        assert np.abs(first[y, x].astype(int) - colour).max() < 25, (y, x, first[y, x])


def test_errors_surface_as_the_packages_exceptions(oa: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as seconds:
        oa.videos.create(prompt="p", seconds="12")  # sora-2's model does 4, 6 or 8 seconds
    assert seconds.value.status_code == 400
    assert seconds.value.param == "seconds" and seconds.value.type == "invalid_request_error"
    assert '"4", "6", "8"' in seconds.value.message and '"12"' in seconds.value.message

    with pytest.raises(openai.BadRequestError) as size:
        oa.videos.create(prompt="p", size="1024x1792")
    assert size.value.param == "size" and "1280x720" in size.value.message

    with pytest.raises(openai.BadRequestError) as sized:
        oa.videos.create(prompt="p", size="1920x1080", seconds="4")  # Veo: 1080p at 8 s only
    assert sized.value.param == "size"
    assert sized.value.body["message"] == (
        'size "1920x1080" on model "veo3.1-fast-official" needs seconds "8" (got "4")'
    )

    with pytest.raises(openai.BadRequestError) as model:
        oa.videos.create(prompt="p", model="no-such-model")
    assert model.value.param == "model" and "sora-2" in model.value.message

    with pytest.raises(openai.BadRequestError) as reference:
        oa.videos.create(prompt="p", input_reference=("notes.txt", b"not a picture", "text/plain"))
    assert reference.value.param == "input_reference"
    assert reference.value.message.split(" - ", 1)[-1].startswith("input_reference")

    with pytest.raises(openai.BadRequestError) as blank:
        oa.videos.create(prompt="   ")
    assert blank.value.param == "prompt"

    with pytest.raises(openai.BadRequestError) as order:
        oa.videos.list(order="asc")
    assert order.value.param == "order"

    with pytest.raises(openai.NotFoundError):
        oa.videos.retrieve("task_01NOSUCHTASK000000000000000")

    queued = oa.videos.create(prompt="p", model="sandbox", seconds="1")
    with pytest.raises(openai.BadRequestError) as variant:
        oa.videos.download_content(queued.id, variant="spritesheet")
    assert variant.value.param == "variant"

    stranger = openai.OpenAI(base_url=server.url + "/v1", api_key="rs_test_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        stranger.videos.list()
    assert auth.value.type == "authentication_error"
    other_key = server.mint("test", "facade-neighbour")
    neighbour = openai.OpenAI(base_url=server.url + "/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        neighbour.videos.retrieve(queued.id)
    assert queued.id not in [v.id for v in neighbour.videos.list().data]
    finished(oa, queued.id)


def test_json_bodies_and_idempotency(oa: openai.OpenAI, client: httpx.Client) -> None:
    """Clients that send JSON (not multipart) work too, reference URLs included, and the
    Idempotency-Key header makes a retried create return the first video."""
    headers = {"Idempotency-Key": f"facade-{secrets.token_hex(6)}"}
    body = {"prompt": "a quiet street", "model": "sandbox", "seconds": 1, "size": "1280x720"}
    first = client.post("/v1/videos", json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = oa.videos.create(
        prompt="a quiet street", model="sandbox", seconds="1", size="1280x720",
        extra_headers=headers,
    )  # fmt: skip
    assert again.id == first.json()["id"]
    conflict = client.post("/v1/videos", json={**body, "prompt": "changed"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["param"] == "Idempotency-Key"

    refused = client.post(
        "/v1/videos",
        json={**body, "input_reference": {"image_url": "http://10.9.8.7/cat.png"}},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input_reference"
    assert "private" in refused.json()["error"]["message"]
    assert refused.json()["error"]["message"].startswith('input_reference host "10.9.8.7"')
    for reference in ("ftp://x/cat.png", "data:image/png;base64,@@", "http://x:99999/a.png"):
        shape = client.post("/v1/videos", json={**body, "input_reference": reference})
        assert shape.status_code == 400
        assert shape.json()["error"]["param"] == "input_reference"
        assert shape.json()["error"]["message"].startswith("input_reference must ")
    assert client.post("/v1/videos", content=b"[1, 2]").status_code == 400
    finished(oa, again.id)


def test_service_errors_are_mapped_by_status_and_param_not_by_text() -> None:
    """The facade renames `param` by its table and makes the not-found message from the id the
    client sent; a message is never rewritten by what it says."""
    missing = openai_error(NotFound("whatever the service wrote", param="task_id"), "task_x")
    assert (type(missing), missing.message, missing.param) == (
        NotFound, 'no video "task_x" found', "video_id"
    )  # fmt: skip
    busy = openai_error(Conflict("task_id task_x is running", param="task_id"), "task_x")
    assert (type(busy), busy.message, busy.param) == (
        Conflict,
        "task_id task_x is running",
        "video_id",
    )
    refused = InvalidRequest('resolution "4K" needs a Vertex AI credential', param="resolution")
    renamed = openai_error(refused)
    assert (renamed.status, renamed.type, renamed.param) == (400, "invalid_request_error", "size")
    assert renamed.message == refused.message
    own = InvalidRequest("duration is named in the text only", param="prompt")
    assert openai_error(own) is own
    assert openai_error(NotFound("no task", param="task_id")).message == "no task"  # no id: kept


# -- no input produces a 500 ---------------------------------------------------------------------

FIELDS = ["model", "prompt", "seconds", "size", "input_reference", "seed", "generate_audio"]
VALUES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
VALUES = VALUES | st.sampled_from(["4", "²", "1280x720", "720x1280", "sora-2", "sandbox", "data:"])
JSON_VALUES = st.recursive(
    VALUES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3)
)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    # No worker: accepted videos just wait, so the fuzzing costs no rendering.
    live = LiveServer(make_settings(tmp_path_factory.mktemp("facade") / "data"), run_worker=False)
    live.start()
    yield live, live.mint("test")
    live.stop()


def _no_500(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        payload = response.json()
        assert payload["code"] == response.status_code
        assert set(payload["error"]) == {"message", "type", "param"}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # counts: conftest.py
@given(
    body=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON_VALUES, max_size=6),
    form=st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=20), max_size=5),
    upload=st.none() | st.binary(max_size=64),
    query=st.dictionaries(
        st.sampled_from(["limit", "after", "order", "variant"]), st.text(max_size=8)
    ),
    video=st.text(max_size=30),
)
@pytest.mark.slow
def test_random_requests_never_fail_the_server(
    idle: tuple[LiveServer, str],
    body: dict[str, object],
    form: dict[str, str],
    upload: bytes | None,
    query: dict[str, str],
    video: str,
) -> None:
    live, key = idle
    with live.client(key) as c:
        _no_500(c.post("/v1/videos", content=json.dumps(body)))
        files = {"input_reference": ("x.png", upload, "image/png")} if upload is not None else None
        _no_500(c.post("/v1/videos", data=form, files=files))
        _no_500(c.get("/v1/videos", params=query))
        path = "/v1/videos/" + (quote(video, safe="") or "x")
        _no_500(c.get(path))
        _no_500(c.get(path + "/content", params=query))
        _no_500(c.delete(path))
