"""The diffusers provider end to end: tiny random-weight pipelines of every family, built here.

Each family's checkpoint is built from small configs in `tests/tiny_pipelines.py` (tokenizer
included, nothing downloaded), saved to a temporary directory the way a published checkpoint is
laid out, and declared as a model in settings. Requests then go over real HTTP to a live server
whose in-process worker loads the checkpoints on the CPU, and the MP4s that come back are probed
and decoded: they must have the size, frame count and frame rate the mapping promised.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"  # any attempt to reach the hub fails instead of downloading

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from reelserve.domain.models import ModelEntry
from reelserve.media.video import decode_frames, probe_video
from reelserve.providers.diffusers.catalog import prepare_local_model
from reelserve.providers.diffusers.checkpoint import checkpoint_geometry, derived_size, frame_count
from reelserve.providers.diffusers.options import LocalModelError
from reelserve.providers.diffusers.plan import plan_render
from reelserve.providers.registry import build_providers
from tests import tiny_pipelines
from tests.support import LiveServer, make_settings, submit, wait_task

FPS = 8
# A pixel budget that maps every 16:9 resolution to 64x32 (and 9:16 to 32x64) on these models.
BUDGET = 2048
STEPS = 2


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "wan_t2v": tiny_pipelines.save_wan_t2v(root / "wan-t2v"),
        "wan_flf2v": tiny_pipelines.save_wan_flf2v(root / "wan-flf2v"),
        "wan22_i2v": tiny_pipelines.save_wan22_i2v(root / "wan22-i2v"),
        "ltx": tiny_pipelines.save_ltx(root / "ltx"),
        "ltx2": tiny_pipelines.save_ltx2(root / "ltx2"),
    }


def local_entry(
    model_id: str,
    family: str,
    checkpoint: Path,
    *,
    modes: list[str],
    audio: bool = False,
    durations: list[int] | None = None,
    sizes: dict[str, tuple[int, int]] | None = None,
    **options: Any,
) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        provider="diffusers",
        modes=modes,  # type: ignore[arg-type]
        durations=durations or [1, 2],
        default_duration=1,
        resolutions=["720p", "1080p"],
        audio=audio,
        fps=FPS,
        sizes=sizes or {},
        estimated_time=5,
        options={
            "family": family,
            "checkpoint": str(checkpoint),
            "dtype": "float32",
            "num_inference_steps": STEPS,
            "max_sequence_length": 16,
            "max_pixels": BUDGET,
            **options,
        },
    )


def local_models(checkpoints: dict[str, Path]) -> list[ModelEntry]:
    return [
        local_entry(
            "wan-t2v",
            "wan",
            checkpoints["wan_t2v"],
            modes=["t2v"],
            batch_samples=True,
            attention_backend="native",
        ),
        local_entry("wan-flf2v", "wan", checkpoints["wan_flf2v"], modes=["flf2v"]),
        local_entry("wan22-i2v", "wan", checkpoints["wan22_i2v"], modes=["i2v", "flf2v"]),
        local_entry("ltx", "ltx", checkpoints["ltx"], modes=["t2v", "i2v", "flf2v"]),
        local_entry("ltx2", "ltx2", checkpoints["ltx2"], modes=["t2v", "i2v", "flf2v"], audio=True),
        # The same LTX checkpoint with memory-saving options: model CPU offload, VAE tiling.
        local_entry(
            "ltx-offload",
            "ltx",
            checkpoints["ltx"],
            modes=["t2v"],
            cpu_offload="model",
            vae_tiling=True,
        ),
        # Many steps, so a task is still denoising when the test cancels it.
        local_entry(
            "wan-slow", "wan", checkpoints["wan_t2v"], modes=["t2v"], num_inference_steps=1000
        ),
        # A declared size far beyond any machine's memory: the latents cannot be allocated.
        local_entry(
            "wan-huge",
            "wan",
            checkpoints["wan_t2v"],
            modes=["t2v"],
            sizes={"720p": (1 << 20, 1 << 20)},
        ),
    ]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]
) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("data"), models=local_models(checkpoints), device="cpu"
    )
    live = LiveServer(settings).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client(server.mint("live", "diffusers tests")) as c:
        yield c


def image_url(colour: tuple[int, int, int], size: tuple[int, int] = (96, 40)) -> str:
    """A PNG as a data URL: a colour field with a white square, so the image is not flat."""
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def run(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    task = wait_task(client, submit(client, body), timeout=300)
    assert task["status"] == "completed", task
    return task


def download(client: httpx.Client, video: dict[str, Any], dest: Path) -> Path:
    response = client.get(video["url"][0])
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest


def frames_of(client: httpx.Client, video: dict[str, Any], dest: Path) -> np.ndarray:
    return np.stack(list(decode_frames(download(client, video, dest))))


def check_video(
    client: httpx.Client,
    video: dict[str, Any],
    dest: Path,
    *,
    width: int,
    height: int,
    frames: int,
    audio: bool = False,
) -> None:
    """The file and the task result both say what the mapping promised."""
    info = probe_video(download(client, video, dest))
    assert (info.width, info.height, info.frame_count) == (width, height, frames)
    assert info.fps == pytest.approx(FPS)
    assert info.video_codec == "h264"
    assert info.has_audio is audio
    if audio:
        assert info.audio_codec == "aac"
        assert info.audio_duration == pytest.approx(frames / FPS, abs=0.15)
    assert (video["width"], video["height"]) == (width, height)
    assert video["fps"] == pytest.approx(FPS)
    assert video["duration"] == pytest.approx(frames / FPS, abs=1e-3)
    assert video["has_audio"] is audio


# -- pure mapping rules --------------------------------------------------------------------------


def test_frame_counts_follow_each_vae_rule() -> None:
    # Wan: 4k+1 at 16 fps; LTX-Video and LTX-2: 8k+1 at 24 fps; never shorter than asked.
    assert frame_count(5, 16, 4) == 81
    assert frame_count(4, 16, 4) == 65
    assert frame_count(1, 16, 4) == 17
    assert frame_count(5, 24, 8) == 121
    assert frame_count(4, 24, 8) == 97
    assert frame_count(2, 24, 8) == 49
    assert frame_count(1, 8, 8) == 9
    for duration in range(1, 21):
        for fps, temporal in ((16, 4), (24, 8), (25, 8), (8, 4)):
            n = frame_count(duration, fps, temporal)
            assert (n - 1) % temporal == 0
            assert duration * fps <= n < duration * fps + temporal


def test_sizes_keep_the_aspect_ratio_within_the_pixel_budget() -> None:
    assert derived_size("720p", 1280 * 720, 16) == (1280, 720)
    assert derived_size("1080p", 1280 * 720, 16) == (1280, 720)
    assert derived_size("4K", 1280 * 720, 16) == (1280, 720)
    assert derived_size("720p", 832 * 480, 16) == (848, 480)  # Wan's 480p class
    assert derived_size("720p", 768 * 512, 32) == (832, 480)  # LTX: multiples of 32
    assert derived_size("720p", BUDGET, 16) == (64, 32)
    assert derived_size("720p", 1, 32) == (32, 32)  # never below one multiple


def test_checkpoints_tell_their_geometry_and_modes(checkpoints: dict[str, Path]) -> None:
    wan = checkpoint_geometry("wan", checkpoints["wan_t2v"])
    assert wan is not None and (wan.multiple, wan.temporal) == (16, 4)
    assert wan.modes == {"t2v"}
    flf = checkpoint_geometry("wan", checkpoints["wan_flf2v"])
    assert flf is not None and flf.modes == {"flf2v"}
    wan22 = checkpoint_geometry("wan", checkpoints["wan22_i2v"])
    assert wan22 is not None and wan22.modes == {"i2v", "flf2v"}
    for family in ("ltx", "ltx2"):
        geometry = checkpoint_geometry(family, checkpoints[family])
        assert geometry is not None and (geometry.multiple, geometry.temporal) == (32, 8)
        assert geometry.modes == {"t2v", "i2v", "flf2v"}
    with pytest.raises(LocalModelError, match="not a LTX-Video one"):
        checkpoint_geometry("ltx", checkpoints["ltx2"])
    assert checkpoint_geometry("wan", checkpoints["wan_t2v"] / "missing") is None


def test_plan_maps_a_request_onto_the_model(checkpoints: dict[str, Path]) -> None:
    from reelserve.domain.spec import parse_generation_request

    model = prepare_local_model(
        local_entry("ltx", "ltx", checkpoints["ltx"], modes=["t2v", "i2v", "flf2v"])
    )
    body = {"model": "ltx", "prompt": "a cat", "duration": 2, "aspect_ratio": "9:16", "seed": 7}
    spec = parse_generation_request({**body, "sample_count": 3}, {"ltx": model.entry})
    plan = plan_render(model, spec)
    assert (spec.width, spec.height) == (720, 1280)  # the request's size, for input fitting
    assert (plan.width, plan.height, plan.frames, plan.fps) == (32, 64, 17, FPS)
    assert plan.seeds == (7, 8, 9)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"audio": True}, "generate no audio; set audio = false"),
        ({"durations": [1, 20]}, r"durations \[20\] need more than max_frames = 81"),
        ({"modes": ["t2v", "i2v"]}, "a Wan text-to-video checkpoint, which cannot do i2v"),
        ({"sizes": {"720p": (60, 32)}}, "sizes.720p must be positive multiples of 16"),
        ({"sizes": {"4K": (64, 32)}}, "sizes names resolution '4K'"),
        ({"options": {"family": "wan"}}, "options.checkpoint: Field required"),
        ({"options": {"checkpoint": "/x", "family": "sora"}}, "options.family: Input should be"),
        ({"options": {"checkpoint": "/x", "family": "wan", "steps": 3}}, "options.steps: Extra"),
        ({"options": {"checkpoint": "/x", "family": "wan", "cpu_offload": "yes"}}, "cpu_offload"),
    ],
    ids=[
        "audio",
        "duration",
        "mode",
        "multiple",
        "unknown-size",
        "no-dir",
        "family",
        "typo",
        "offload",
    ],
)
def test_startup_refuses_an_entry_the_model_cannot_serve(
    tmp_path: Path, checkpoints: dict[str, Path], change: dict[str, Any], message: str
) -> None:
    entry = local_entry("bad", "wan", checkpoints["wan_t2v"], modes=["t2v"])
    entry = entry.model_copy(update=change)
    settings = make_settings(tmp_path, models=[entry])
    with pytest.raises(LocalModelError, match=message) as caught:
        build_providers(settings)
    assert str(caught.value).startswith('model "bad": ')


# -- over HTTP -----------------------------------------------------------------------------------


def test_models_endpoint_shows_what_each_local_model_renders(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["data"]}
    wan = models["wan-t2v"]
    assert wan["provider"] == "diffusers"
    assert wan["modes"] == ["t2v"]
    assert wan["audio"] is False
    assert wan["fps"] == FPS
    assert wan["sizes"] == {"720p": [64, 32], "1080p": [64, 32]}
    assert models["ltx2"]["audio"] is True
    assert models["wan-huge"]["sizes"]["720p"] == [1 << 20, 1 << 20]
    assert "options" not in wan
    # Wan 2.2 I2V-A14B was never trained on first+last frame: clients are told.
    assert models["wan22-i2v"]["details"] == {"experimental_modes": ["flf2v"]}
    assert "details" not in wan


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "wan-t2v", "generate_audio": True}, "generate_audio", "cannot generate audio"),
        ({"model": "ltx", "duration": 3}, "duration", "must be one of 1, 2 seconds"),
        ({"model": "wan-t2v", "resolution": "4K"}, "resolution", '"720p", "1080p"'),
        (
            {"model": "wan-t2v", "first_frame_image": image_url((200, 30, 30))},
            "first_frame_image",
            "it can do: text-to-video",
        ),
        (
            {"model": "wan-flf2v", "first_frame_image": image_url((200, 30, 30))},
            "first_frame_image",
            "it can do: first+last frame",
        ),
    ],
    ids=["audio", "duration", "4k", "i2v-on-t2v", "i2v-on-flf2v"],
)
def test_a_request_the_model_cannot_serve_is_refused_at_submit(
    client: httpx.Client, body: dict[str, Any], param: str, message: str
) -> None:
    response = client.post("/v1/videos/generations", json={"prompt": "a cat", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]


def test_text_to_video_samples_have_the_promised_shape(
    client: httpx.Client, tmp_path: Path
) -> None:
    body = {"model": "wan-t2v", "prompt": "a red robot dancing", "duration": 2}
    task = run(client, {**body, "seed": 41, "sample_count": 2, "negative_prompt": "blurry"})
    first, second = task["result"]["videos"]
    assert (first["seed"], second["seed"]) == (41, 42)
    for i, video in enumerate((first, second)):
        check_video(client, video, tmp_path / f"{i}.mp4", width=64, height=32, frames=17)
    a = frames_of(client, first, tmp_path / "a.mp4")
    b = frames_of(client, second, tmp_path / "b.mp4")
    assert not np.array_equal(a, b), "two samples (two seeds) gave the same video"


def test_same_seed_same_video_other_seed_other_video(client: httpx.Client, tmp_path: Path) -> None:
    body = {"model": "ltx", "prompt": "a blue bird flying over the sea", "aspect_ratio": "9:16"}
    one = run(client, {**body, "seed": 5})["result"]["videos"][0]
    again = run(client, {**body, "seed": 5})["result"]["videos"][0]
    other = run(client, {**body, "seed": 6})["result"]["videos"][0]
    check_video(client, one, tmp_path / "one.mp4", width=32, height=64, frames=9)
    frames_one = frames_of(client, one, tmp_path / "1.mp4")
    assert np.array_equal(frames_one, frames_of(client, again, tmp_path / "2.mp4"))
    assert not np.array_equal(frames_one, frames_of(client, other, tmp_path / "3.mp4"))


def test_memory_options_do_not_change_the_video(client: httpx.Client, tmp_path: Path) -> None:
    body = {"prompt": "a green field in the morning", "seed": 21, "duration": 2}
    plain = run(client, {**body, "model": "ltx"})["result"]["videos"][0]
    offloaded = run(client, {**body, "model": "ltx-offload"})["result"]["videos"][0]
    check_video(client, offloaded, tmp_path / "o.mp4", width=64, height=32, frames=17)
    assert np.array_equal(
        frames_of(client, plain, tmp_path / "p.mp4"),
        frames_of(client, offloaded, tmp_path / "o2.mp4"),
    )


@pytest.mark.parametrize("model", ["wan22-i2v", "ltx", "ltx2"])
def test_first_frame(client: httpx.Client, tmp_path: Path, model: str) -> None:
    body = {
        "model": model,
        "prompt": "a cat walking",
        "duration": 2,
        "seed": 3,
        "first_frame_image": image_url((30, 160, 40)),
        "resize_mode": "crop",
    }
    video = run(client, body)["result"]["videos"][0]
    check_video(client, video, tmp_path / "v.mp4", width=64, height=32, frames=17)


@pytest.mark.parametrize("model", ["wan-flf2v", "wan22-i2v", "ltx", "ltx2"])
def test_first_and_last_frame(client: httpx.Client, tmp_path: Path, model: str) -> None:
    body = {
        "model": model,
        "prompt": "the sun over the city at night",
        "seed": 11,
        "aspect_ratio": "9:16",
        "first_frame_image": image_url((30, 60, 200)),
        "last_frame_image": image_url((220, 200, 30), size=(40, 96)),
    }
    video = run(client, body)["result"]["videos"][0]
    check_video(client, video, tmp_path / "v.mp4", width=32, height=64, frames=9)


def test_ltx2_serves_generate_audio(client: httpx.Client, tmp_path: Path) -> None:
    body = {"model": "ltx2", "prompt": "rain on a street", "duration": 2, "seed": 9}
    with_audio = run(client, {**body, "generate_audio": True})["result"]["videos"][0]
    check_video(client, with_audio, tmp_path / "a.mp4", width=64, height=32, frames=17, audio=True)
    silent = run(client, body)["result"]["videos"][0]
    check_video(client, silent, tmp_path / "s.mp4", width=64, height=32, frames=17, audio=False)
    # The picture is the same with or without the track: the model always generates both.
    assert np.array_equal(
        frames_of(client, with_audio, tmp_path / "a2.mp4"),
        frames_of(client, silent, tmp_path / "s2.mp4"),
    )


def test_cancel_mid_run_while_progress_rises(client: httpx.Client) -> None:
    task_id = submit(client, {"model": "wan-slow", "prompt": "a slow river", "seed": 1})
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        data = client.get(f"/v1/tasks/{task_id}").json()["data"]
        assert data["status"] in ("pending", "processing"), data
        if data["status"] == "processing" and data["progress"] > 0:
            if not seen or data["progress"] > seen[-1]:
                seen.append(data["progress"])
            if len(seen) >= 2:
                break
        time.sleep(0.1)
    assert len(seen) >= 2 and seen == sorted(seen), f"progress did not rise: {seen}"
    assert seen[-1] < 90, "the task was nearly done before it could be cancelled"
    response = client.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 200, response.text
    final = wait_task(client, task_id, timeout=60)
    assert final["status"] == "cancelled"
    assert final["progress"] < 100


def test_out_of_memory_fails_the_task_and_the_worker_stays_healthy(
    client: httpx.Client, tmp_path: Path
) -> None:
    task = wait_task(client, submit(client, {"model": "wan-huge", "prompt": "a cat"}), timeout=120)
    assert task["status"] == "failed"
    assert task["error"]["code"] == "out_of_memory"
    assert "ran out of memory" in task["error"]["message"]
    assert "lower resolution" in task["error"]["message"]
    # The same worker (and the same loaded pipeline) renders the next task.
    video = run(client, {"model": "wan-t2v", "prompt": "a cat", "seed": 2})["result"]["videos"][0]
    check_video(client, video, tmp_path / "v.mp4", width=64, height=32, frames=9)


@pytest.mark.slow
def test_worker_device_option_reaches_the_provider(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    """`reelserve worker --device cuda:7` on a machine without that GPU: the local model's task
    fails with a message naming the device, from a real worker process."""
    entry = local_entry("wan-t2v", "wan", checkpoints["wan_t2v"], modes=["t2v"])
    models_json = json.dumps([entry.model_dump(mode="json")])
    api = LiveServer(make_settings(tmp_path, models=[entry]), run_worker=False).start()
    env = {
        **os.environ,
        "REELSERVE_DATA_DIR": str(tmp_path),
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_POLL_INTERVAL": "0.1",
        "REELSERVE_MODELS": models_json,
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "reelserve", "worker", "--device", "cuda:7", "--concurrency", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        with api.client(api.mint("live")) as c:
            task = wait_task(c, submit(c, {"model": "wan-t2v", "prompt": "a cat"}), timeout=120)
        assert task["status"] == "failed", task
        assert task["error"]["code"] == "provider_not_configured"
        assert "cuda:7" in task["error"]["message"]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
        api.stop()
