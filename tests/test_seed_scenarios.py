"""The seed's text-to-video request bodies (scenarios 1, 2 and 5) over real HTTP: accepted with
the seed's exact response shape, and completed with a video whose probed properties match the
request. The image ones (3 and 4) are in test_image_to_video.py, which checks their frames.

Eight-second clips (one in 1080p): the `slow` lane, on SQLite only (the queue's engines are
tested elsewhere; rendering does not depend on them)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from reelserve.media.video import probe_video
from tests.support import sqlite_only, wait_task

SCENARIO_1 = {
    "model": "veo3.1-fast-official",
    "prompt": "a golden retriever running on the beach, sunset, cinematic",
}
SCENARIO_2 = {
    "model": "veo3.1-quality-official",
    "prompt": "a cinematic close-up of a ragdoll cat slowly walking through a sunlit living room",
    "negative_prompt": "blurry, low quality, watermark, text",
    "duration": 8,
    "aspect_ratio": "16:9",
    "resolution": "1080p",
    "seed": 12345,
    "generate_audio": True,
    "person_generation": "disallow",
    "enhance_prompt": True,
}
SCENARIO_5 = {
    "model": "veo3.1-quality-official",
    "prompt": "a busy coffee shop with people chatting and barista making latte art",
    "duration": 8,
    "generate_audio": True,
    "aspect_ratio": "16:9",
}
TASK_ID = re.compile(r"^task_[0-9A-HJKMNP-TV-Z]{26}$")

pytestmark = pytest.mark.slow


def _download(client: httpx.Client, url: str, dest: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    dest.write_bytes(response.content)
    return dest


@sqlite_only
@pytest.mark.parametrize(
    ("body", "width", "height", "audio", "seed"),
    [
        (SCENARIO_1, 1280, 720, False, None),
        (SCENARIO_2, 1920, 1080, True, 12345),
        (SCENARIO_5, 1280, 720, True, None),
    ],
    ids=["scenario-1", "scenario-2", "scenario-5"],
)
def test_text_to_video_scenarios_complete(
    client: httpx.Client,
    tmp_path: Path,
    body: dict[str, Any],
    width: int,
    height: int,
    audio: bool,
    seed: int | None,
) -> None:
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200
    payload = response.json()
    assert set(payload) == {"code", "data"}
    assert payload["code"] == 200
    assert len(payload["data"]) == 1
    assert set(payload["data"][0]) == {"status", "task_id"}
    assert payload["data"][0]["status"] == "submitted"
    task_id = payload["data"][0]["task_id"]
    assert TASK_ID.match(task_id)

    task = wait_task(client, task_id, timeout=300)
    assert task["status"] == "completed", task
    assert task["progress"] == 100
    assert task["model"] == body["model"]
    assert task["id"] == task_id
    assert task["completed"] >= task["created"]
    assert task["actual_time"] >= 0
    assert task["estimated_time"] > 0
    assert "error" not in task
    (video,) = task["result"]["videos"]
    assert (video["width"], video["height"], video["fps"]) == (width, height, 24)
    assert video["duration"] == pytest.approx(8, abs=0.05)
    assert video["has_audio"] is audio
    if seed is not None:
        assert video["seed"] == seed
    assert video["expires_at"] > task["completed"]

    path = _download(client, video["url"][0], tmp_path / "out.mp4")
    info = probe_video(path)
    assert (info.width, info.height) == (width, height)
    assert info.fps == pytest.approx(24)
    assert info.frame_count == 8 * 24
    assert info.duration == pytest.approx(8, abs=0.05)
    assert info.has_audio is audio
    assert info.video_codec == "h264"
    assert info.pix_fmt == "yuv420p"
    if audio:
        assert info.audio_codec == "aac"
        assert info.audio_duration == pytest.approx(8, abs=0.1)

    thumb = client.get(video["thumbnail_url"])
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "JPEG"
    assert image.width / image.height == pytest.approx(width / height, rel=0.02)
