"""`reelserve.media.video`: what comes out of `encode_mp4` is what clients are promised.

Exact duration and frame count, H.264 in yuv420p, AAC audio of the same length, `moov` before
`mdat` (faststart), colours that survive the round trip, and no partial file after a failure.
"""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from reelserve.media.video import (
    VideoInfo,
    decode_frames,
    encode_mp4,
    finish_clip,
    probe_video,
    write_thumbnail,
)

W, H, FPS = 160, 96, 24


def gradient_frames(count: int, width: int = W, height: int = H) -> list[NDArray[np.uint8]]:
    """Smooth, moving test frames (compress well, so round-trip errors stay small)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        r = (xs / width * 200 + i * 2) % 256
        g = ys / height * 180 + 40
        b = np.full_like(xs, 60 + (i * 5) % 120)
        frames.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return frames


def tone(seconds: float, rate: int = 48000, channels: int = 2) -> NDArray[np.float32]:
    t = np.arange(round(seconds * rate)) / rate
    rows = [0.2 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order."""
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_encode_with_audio_probes_exactly(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    written = encode_mp4(path, gradient_frames(36), width=W, height=H, fps=FPS, audio=tone(1.5))
    assert written == 36
    info = probe_video(path)
    assert info == VideoInfo(
        duration=1.5,
        width=W,
        height=H,
        fps=24.0,
        frame_count=36,
        has_audio=True,
        video_codec="h264",
        audio_codec="aac",
        pix_fmt="yuv420p",
        audio_duration=info.audio_duration,
    )
    assert info.audio_duration == pytest.approx(1.5, abs=0.03)


def test_encode_without_audio_has_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    encode_mp4(path, gradient_frames(24), width=W, height=H, fps=FPS)
    info = probe_video(path)
    assert info.has_audio is False
    assert info.audio_codec is None
    assert info.audio_duration is None
    assert info.duration == 1.0
    assert info.frame_count == 24


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_duration_is_frame_count_over_fps(tmp_path: Path, fps: int) -> None:
    path = tmp_path / f"{fps}.mp4"
    encode_mp4(path, gradient_frames(fps * 2 + 1), width=W, height=H, fps=fps)
    info = probe_video(path)
    assert info.frame_count == fps * 2 + 1
    assert info.fps == pytest.approx(fps)
    assert info.duration == pytest.approx((fps * 2 + 1) / fps, abs=1e-6)


def test_mono_audio(tmp_path: Path) -> None:
    path = tmp_path / "mono.mp4"
    encode_mp4(path, gradient_frames(24), width=W, height=H, fps=FPS, audio=tone(1, channels=1))
    info = probe_video(path)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.audio_duration == pytest.approx(1.0, abs=0.03)


def test_faststart_puts_moov_before_mdat(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    encode_mp4(path, gradient_frames(24), width=W, height=H, fps=FPS, audio=tone(1))
    boxes = top_level_boxes(path)
    assert boxes[0] == "ftyp"
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_colours_survive_the_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "colours.mp4"
    frames = gradient_frames(12)
    # Saturated solid colours catch a wrong YUV matrix (BT.601 vs BT.709) at once.
    for k, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 60, 220), (240, 240, 240)]):
        frames[k] = np.full((H, W, 3), colour, dtype=np.uint8)
    encode_mp4(path, frames, width=W, height=H, fps=FPS, crf=18)
    decoded = list(decode_frames(path))
    assert len(decoded) == len(frames)
    for original, back in zip(frames, decoded, strict=True):
        assert back.shape == (H, W, 3) and back.dtype == np.uint8
        assert mad(original, back) < 3.0


def test_reproducible_encoding_gives_identical_files(tmp_path: Path) -> None:
    # x264's MB-tree made this build's output vary between runs (see `x264_options`); small
    # frames showed it in most runs, so a few encodes here catch it coming back.
    digests = set()
    for k in range(4):
        path = tmp_path / f"{k}.mp4"
        frames = [f.copy() for f in gradient_frames(30)]  # fresh buffers every time
        encode_mp4(path, frames, width=W, height=H, fps=FPS, audio=tone(1.25))
        digests.add(path.read_bytes())
    assert len(digests) == 1


def test_failure_in_on_frame_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "cancelled.mp4"
    seen: list[int] = []

    class Stop(Exception):
        pass

    def on_frame(index: int) -> None:
        seen.append(index)
        if index == 5:
            raise Stop

    with pytest.raises(Stop):
        encode_mp4(
            path, gradient_frames(24), width=W, height=H, fps=FPS, audio=tone(1), on_frame=on_frame
        )
    assert seen == [0, 1, 2, 3, 4, 5]
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_are_rejected_without_leaving_a_file(tmp_path: Path) -> None:
    frames = gradient_frames(3)
    frames[1] = np.zeros((H, W + 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="frame 1"):
        encode_mp4(tmp_path / "bad.mp4", frames, width=W, height=H, fps=FPS)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(tmp_path / "odd.mp4", gradient_frames(1, 161, 96), width=161, height=96, fps=24)
    assert list(tmp_path.iterdir()) == []


def test_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    encode_mp4(path, gradient_frames(24), width=W, height=H, fps=FPS)
    assert probe_video(path).frame_count == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_progress_callback_sees_every_frame(tmp_path: Path) -> None:
    seen: list[int] = []
    count = encode_mp4(
        tmp_path / "c.mp4",
        iter(gradient_frames(30)),
        width=W,
        height=H,
        fps=FPS,
        on_frame=seen.append,
    )
    assert count == 30
    assert seen == list(range(30))


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((320, 180), 100, (100, 56)), ((180, 320), 100, (56, 100)), ((320, 180), 640, (320, 180))],
)
def test_thumbnail_dimensions(
    tmp_path: Path, size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    width, height = size
    video = tmp_path / "v.mp4"
    encode_mp4(video, gradient_frames(2, width, height), width=width, height=height, fps=FPS)
    thumb = tmp_path / "thumbs" / "v.jpg"
    assert write_thumbnail(video, thumb, max_side=max_side) == expected
    with Image.open(thumb) as image:
        assert image.format == "JPEG"
        assert image.size == expected


def test_thumbnail_is_the_first_frame(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    frames = gradient_frames(3)
    frames[0] = np.full((H, W, 3), (200, 40, 40), dtype=np.uint8)
    encode_mp4(video, frames, width=W, height=H, fps=FPS)
    thumb = tmp_path / "v.jpg"
    write_thumbnail(video, thumb)
    with Image.open(thumb) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert mad(pixels, frames[0]) < 4.0


def test_finish_clip_is_probe_and_thumbnail_on_one_open(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    frames = gradient_frames(5, 320, 180)
    frames[0] = np.full((180, 320, 3), (30, 160, 220), dtype=np.uint8)
    encode_mp4(video, frames, width=320, height=180, fps=FPS, audio=tone(5 / FPS))
    info, size = finish_clip(video, tmp_path / "one" / "v.jpg", max_side=100)
    assert info == probe_video(video)
    assert (info.width, info.height, info.frame_count, info.has_audio) == (320, 180, 5, True)
    assert size == write_thumbnail(video, tmp_path / "two" / "v.jpg", max_side=100) == (100, 56)
    assert (tmp_path / "one" / "v.jpg").read_bytes() == (tmp_path / "two" / "v.jpg").read_bytes()
    with Image.open(tmp_path / "one" / "v.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))
    # Scaled while converted, swscale's area filter comes out a level or two darker than an
    # unscaled decode (grey 128 gives 126); JPEG adds its own error.
    assert mad(pixels, np.full((56, 100, 3), (30, 160, 220), dtype=np.uint8)) < 6.0


def test_finish_clip_refuses_a_file_without_video(tmp_path: Path) -> None:
    not_video = tmp_path / "v.mp4"
    not_video.write_bytes(b"\x00" * 64)
    with pytest.raises((ValueError, av.error.FFmpegError)):
        finish_clip(not_video, tmp_path / "v.jpg")
    assert not (tmp_path / "v.jpg").exists()


def test_thumbnail_of_a_stream_that_opens_without_a_keyframe(tmp_path: Path) -> None:
    """A stream cut after its first keyframe opens on P-frames that cannot be decoded: the
    thumbnail is the first frame a decoder gives, from the next keyframe on."""
    video = tmp_path / "cut.mp4"
    red, green = (200, 40, 40), (20, 200, 60)
    with av.open(str(video), "w", format="mp4") as out:
        stream = out.add_stream(
            "libx264", rate=24, options={"x264-params": "keyint=4:min-keyint=4:bframes=0"}
        )
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        packets = []
        for i in range(8):
            rgb = np.full((H, W, 3), red if i < 4 else green, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            packets += stream.encode(frame)
        packets += stream.encode(None)
        assert packets[0].is_keyframe and not packets[1].is_keyframe
        for packet in packets[1:]:
            out.mux(packet)
    info, size = finish_clip(video, tmp_path / "cut.jpg")
    assert (info.frame_count, size) == (7, (W, H))
    with Image.open(tmp_path / "cut.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert mad(pixels, np.full((H, W, 3), green, dtype=np.uint8)) < 4.0
    assert mad(pixels, next(decode_frames(video))) < 4.0
