"""The sandbox provider obeys every parameter, deterministically, without blocking the loop.

Specs are small (320x180, 1 second) so the whole module runs in seconds on two cores; the 9:16 test
goes through `parse_generation_request` to check the swap end to end at the model's real size.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from reelserve.domain.models import default_models
from reelserve.domain.spec import GenerationSpec, parse_generation_request
from reelserve.media.video import decode_frames, probe_video
from reelserve.providers.base import InputImages, TaskCancelled
from reelserve.providers.sandbox.audio import render_audio
from reelserve.providers.sandbox.frames import render_frames
from reelserve.providers.sandbox.provider import SandboxProvider

W, H = 320, 180


class FakeContext:
    """A minimal `RunContext`: records progress, cancels after `cancel_after` progress reports."""

    def __init__(
        self,
        workdir: Path,
        images: InputImages | None = None,
        cancel_after: int | None = None,
    ) -> None:
        self.task_id = "task_test"
        self.workdir = workdir
        self.resume_state: dict[str, Any] | None = None
        self.images = images or InputImages()
        self.can_fail_over = False
        self.progress: list[float] = []
        self.threads: list[str] = []  # the thread of each progress report
        self.checkpoints: list[dict[str, Any]] = []
        self._cancel_after = cancel_after
        self._lock = threading.Lock()

    def report_progress(self, fraction: float) -> None:
        with self._lock:
            self.progress.append(fraction)
            self.threads.append(threading.current_thread().name)

    @property
    def cancel_requested(self) -> bool:
        with self._lock:
            return self._cancel_after is not None and len(self.progress) >= self._cancel_after

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise TaskCancelled("cancelled by the client")

    async def checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoints.append(state)


def make_spec(**overrides: Any) -> GenerationSpec:
    """A small sandbox spec (the size is not one of the model's; the renderer must not care)."""
    values: dict[str, Any] = {
        "model": "sandbox",
        "mode": "t2v",
        "prompt": "a red kite over green hills",
        "duration": 1,
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "width": W,
        "height": H,
        "fps": 24,
        "seed": 7,
        "seed_given": True,
        "sample_count": 1,
        "generate_audio": False,
        "person_generation": "allow_adult",
        "resize_mode": "pad",
    }
    values.update(overrides)
    return GenerationSpec(**values)


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Mean absolute difference on the 0..255 scale."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def sample_image(kind: int) -> NDArray[np.uint8]:
    """A gradient with a solid block: structure that a wrong frame would not match."""
    ys, xs = np.mgrid[0:H, 0:W]
    if kind == 0:
        image = np.stack([xs * 255 // W, ys * 255 // H, np.full_like(xs, 90)], axis=-1)
        image[40:100, 60:140] = (230, 200, 20)
    else:
        image = np.stack([255 - xs * 255 // W, np.full_like(xs, 60), ys * 255 // H], axis=-1)
        image[80:150, 180:300] = (20, 200, 230)
    return image.astype(np.uint8)


# -- the provider ---------------------------------------------------------------------------


@pytest.mark.parametrize("audio", [True, False])
async def test_clip_matches_the_spec(tmp_path: Path, audio: bool) -> None:
    spec = make_spec(duration=2, generate_audio=audio, seed=123)
    ctx = FakeContext(tmp_path)
    clips = await SandboxProvider().run(spec, ctx)
    assert len(clips) == 1
    (clip,) = clips
    assert clip.path == tmp_path / "sample_0.mp4"
    assert clip.seed == 123
    info = probe_video(clip.path)
    assert (info.width, info.height) == (W, H)
    assert info.fps == pytest.approx(24)
    assert info.frame_count == spec.frame_count == 48
    assert info.duration == pytest.approx(2.0, abs=1e-6)
    assert info.video_codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert info.has_audio is audio
    if audio:
        assert info.audio_codec == "aac"
        assert info.audio_duration == pytest.approx(2.0, abs=0.05)
    else:
        assert info.audio_codec is None
    data = clip.path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart


async def test_nine_sixteen_swaps_width_and_height(tmp_path: Path) -> None:
    models = {m.id: m for m in default_models()}
    spec = parse_generation_request(
        {"model": "sandbox", "prompt": "a tall lighthouse", "duration": 1, "aspect_ratio": "9:16"},
        models,
    )
    assert (spec.width, spec.height) == (720, 1280)
    (clip,) = await SandboxProvider().run(spec, FakeContext(tmp_path))
    info = probe_video(clip.path)
    assert (info.width, info.height) == (720, 1280)
    assert info.frame_count == 24


async def test_sample_count_gives_distinct_clips(tmp_path: Path) -> None:
    spec = make_spec(sample_count=2, seed=4294967295)
    clips = await SandboxProvider().run(spec, FakeContext(tmp_path))
    assert [c.path.name for c in clips] == ["sample_0.mp4", "sample_1.mp4"]
    assert [c.seed for c in clips] == [4294967295, 0]  # consecutive seeds wrap around
    assert clips[0].path.read_bytes() != clips[1].path.read_bytes()
    first = [next(decode_frames(c.path)) for c in clips]
    assert mad(first[0], first[1]) > 5


async def test_progress_rises_monotonically_to_one(tmp_path: Path) -> None:
    spec = make_spec(sample_count=2)
    ctx = FakeContext(tmp_path)
    await SandboxProvider().run(spec, ctx)
    assert len(ctx.progress) >= spec.frame_count * 2  # per frame, across both samples
    assert all(b >= a for a, b in itertools.pairwise(ctx.progress))
    assert 0 < ctx.progress[0] < 0.05
    assert ctx.progress[spec.frame_count - 1] == pytest.approx(0.5)
    assert ctx.progress[-1] == pytest.approx(1.0)
    # Per-frame reports come from the rendering thread, not the event loop's.
    loop_thread = threading.current_thread().name
    assert loop_thread not in ctx.threads[:-1]


@pytest.mark.parametrize("cancel_after", [0, 5, 30])
async def test_cancellation_raises_and_leaves_no_partial_file(
    tmp_path: Path, cancel_after: int
) -> None:
    spec = make_spec(sample_count=2, generate_audio=True)
    ctx = FakeContext(tmp_path, cancel_after=cancel_after)
    with pytest.raises(TaskCancelled):
        await SandboxProvider().run(spec, ctx)
    left = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240 - a tiny test directory
    # Only whole samples finished before the cancellation may remain (the worker discards them).
    assert left == (["sample_0.mp4"] if cancel_after > spec.frame_count else [])
    assert len(ctx.progress) == cancel_after


async def test_rendering_does_not_block_the_event_loop(tmp_path: Path) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await SandboxProvider().run(make_spec(duration=2, width=640, height=360), FakeContext(tmp_path))
    elapsed = loop.time() - started
    done.set()
    await task
    # A loop blocked by rendering would tick once or twice; a free one ticks throughout.
    assert ticks >= max(5, elapsed / 0.005 * 0.1)


async def test_image_to_video_starts_on_the_image(tmp_path: Path) -> None:
    first = sample_image(0)
    spec = make_spec(mode="i2v", first_frame_image="https://example.com/a.png")
    (clip,) = await SandboxProvider().run(spec, FakeContext(tmp_path, InputImages(first=first)))
    frames = list(decode_frames(clip.path))
    assert len(frames) == spec.frame_count
    assert mad(frames[0], first) < 6
    assert mad(frames[-1], first) > 6  # it evolves


async def test_first_and_last_frame_are_the_images(tmp_path: Path) -> None:
    first, last = sample_image(0), sample_image(1)
    spec = make_spec(
        mode="flf2v",
        first_frame_image="https://example.com/a.png",
        last_frame_image="https://example.com/b.png",
    )
    images = InputImages(first=first, last=last)
    (clip,) = await SandboxProvider().run(spec, FakeContext(tmp_path, images))
    frames = list(decode_frames(clip.path))
    assert len(frames) == spec.frame_count
    assert mad(frames[0], first) < 6
    assert mad(frames[-1], last) < 6
    middle = frames[len(frames) // 2]
    assert mad(middle, first) > 15 and mad(middle, last) > 15


# -- the pure renderers ---------------------------------------------------------------------


def test_frames_have_the_requested_shape_and_count() -> None:
    spec = make_spec(duration=2, width=256, height=144)
    frames = list(render_frames(spec, 0, InputImages()))
    assert len(frames) == 48
    assert all(f.shape == (144, 256, 3) and f.dtype == np.uint8 for f in frames)


def test_same_seed_gives_identical_frames() -> None:
    spec = make_spec()
    a = list(render_frames(spec, 0, InputImages()))
    b = list(render_frames(spec, 0, InputImages()))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


async def test_same_seed_gives_identical_decoded_video(tmp_path: Path) -> None:
    spec = make_spec(generate_audio=True)
    (a,) = await SandboxProvider().run(spec, FakeContext(tmp_path / "a"))
    (b,) = await SandboxProvider().run(spec, FakeContext(tmp_path / "b"))
    decoded_a, decoded_b = list(decode_frames(a.path)), list(decode_frames(b.path))
    assert all(np.array_equal(x, y) for x, y in zip(decoded_a, decoded_b, strict=True))
    assert a.path.read_bytes() == b.path.read_bytes()  # the file, not only the pixels


def test_different_seeds_differ() -> None:
    a = list(render_frames(make_spec(seed=1), 0, InputImages()))
    b = list(render_frames(make_spec(seed=2), 0, InputImages()))
    assert all(mad(x, y) > 3 for x, y in zip(a, b, strict=True))
    # Sample i uses seed + i, so sample 1 of seed 1 is sample 0 of seed 2.
    c = list(render_frames(make_spec(seed=1, sample_count=2), 1, InputImages()))
    assert all(np.array_equal(x, y) for x, y in zip(b, c, strict=True))


def test_prompt_changes_the_picture() -> None:
    red = next(render_frames(make_spec(prompt="a red fox in a red sunset"), 0, InputImages()))
    blue = next(render_frames(make_spec(prompt="a blue whale in a blue ocean"), 0, InputImages()))
    assert mad(red, blue) > 20
    # Colour words are honoured.
    r_mean, _, b_mean = red.reshape(-1, 3).mean(axis=0)
    assert r_mean > b_mean + 15
    r_mean, _, b_mean = blue.reshape(-1, 3).mean(axis=0)
    assert b_mean > r_mean + 15


def test_negative_prompt_nudges_the_picture() -> None:
    plain = next(render_frames(make_spec(), 0, InputImages()))
    negative = next(render_frames(make_spec(negative_prompt="blurry"), 0, InputImages()))
    assert 0.5 < mad(plain, negative) < 30


def test_frames_move_over_time() -> None:
    frames = list(render_frames(make_spec(), 0, InputImages()))
    steps = [mad(a, b) for a, b in itertools.pairwise(frames)]
    assert all(step > 0.2 for step in steps)  # every frame moves
    assert max(steps) < 10  # and smoothly
    assert mad(frames[0], frames[-1]) > 5


def test_image_frames_are_exact_and_smooth() -> None:
    first, last = sample_image(0), sample_image(1)
    spec = make_spec()
    frames = list(render_frames(spec, 0, InputImages(first=first, last=last)))
    assert np.array_equal(frames[0], first)
    assert np.array_equal(frames[-1], last)
    steps = [mad(a, b) for a, b in itertools.pairwise(frames)]
    assert max(steps) < 12
    only_first = list(render_frames(spec, 0, InputImages(first=first)))
    assert np.array_equal(only_first[0], first)
    assert mad(only_first[1], first) < 3  # eases out of the still image
    steps = [mad(a, b) for a, b in itertools.pairwise(only_first)]
    assert max(steps) < 8


def test_input_images_of_the_wrong_size_are_fitted() -> None:
    frames = render_frames(make_spec(), 0, InputImages(first=np.zeros((50, 70, 3), np.uint8)))
    assert next(frames).shape == (H, W, 3)


def test_audio_shape_level_and_determinism() -> None:
    spec = make_spec(duration=2, generate_audio=True)
    audio = render_audio(spec, 0)
    assert audio.shape == (2, 2 * 48000)
    assert audio.dtype == np.float32
    peak = float(np.abs(audio).max())
    assert 0.1 < peak <= 0.5  # modest volume
    assert not np.array_equal(audio[0], audio[1])  # stereo
    assert abs(float(audio[:, 0].max())) < 1e-3 and abs(float(audio[:, -1].max())) < 1e-3
    assert np.array_equal(audio, render_audio(spec, 0))
    assert not np.array_equal(audio, render_audio(spec, 1))
    assert render_audio(spec, 0, sample_rate=16000).shape == (2, 32000)
