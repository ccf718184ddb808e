"""Encoding, probing and decoding MP4 files with PyAV.

Every clip this server hands out goes through `encode_mp4` (the sandbox and local providers) or at
least through `finish_clip` (all providers: `probe_video` and `write_thumbnail` on one open), so
the choices made here are the ones clients see:

* H.264 High profile in yuv420p: the only combination every browser, phone and editor plays.
* BT.709 limited range, converted explicitly and tagged in the stream, so players do not guess the
  matrix (HD players assume BT.709; swscale's default would silently be BT.601) and a decode with
  `decode_frames` gives back the RGB values that went in, within compression error.
* An exact constant frame rate: time base 1/fps and pts = frame index, with every packet lasting one
  tick, so a probe reports exactly frame_count / fps seconds (clients check durations).
* `movflags=faststart`: the `moov` index precedes the media data, so a browser can start playing
  a signed URL before the whole file has arrived.
* Reproducible by default: the same frames give the same bytes, on any machine (see
  `x264_options`), so "same seed, same video" holds for the file and not only for the pixels.
* The file is written under a temporary name and renamed into place only when complete: an error
  or a cancellation part-way (raised from `on_frame`) never leaves a half-written MP4 behind.

All functions here block (they encode, decode and do file I/O); call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.codec.context import ThreadType
from av.container import InputContainer, OutputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from av.video.stream import VideoStream
from numpy.typing import NDArray
from PIL import Image

# x264's own threading (frame + lookahead threads) scales to a few threads; beyond 8 it mostly adds
# latency and memory per encoder, and several encoders may run side by side on one worker.
MAX_ENCODER_THREADS = 8
# The fixed thread count of reproducible encodes: x264's frame threading limits motion search to
# rows already encoded in reference frames, so its output depends on the thread count.
REPRODUCIBLE_THREADS = 2


@dataclass(frozen=True)
class VideoInfo:
    """What a probe of an MP4 says about it (the values a task result reports)."""

    duration: float
    width: int
    height: int
    fps: float
    frame_count: int
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    pix_fmt: str
    audio_duration: float | None


def encoder_threads() -> int:
    """Threads for one x264 encoder: the CPUs this process may use, capped.

    `sched_getaffinity` honours container CPU sets and `taskset`; `cpu_count` would report the
    host's cores. Using all of them (not x264's default of 1.5x cores) keeps one encoder from
    oversubscribing a small machine, where the renderer feeding it also needs a core.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_ENCODER_THREADS))


def x264_options(*, crf: int, preset: str, reproducible: bool) -> dict[str, str]:
    """libx264 options for `encode_mp4`.

    Reproducible encodes turn MB-tree rate control off and use a fixed number of frame threads.
    MB-tree is the one x264 feature found to make this build's output vary between runs on
    identical input (with B-frames, at any thread count, even single-threaded with a synchronous
    lookahead: some buffer it reads is evidently not initialised); without it, 30 of 30 runs
    were bit-identical at every size tried. The price is some 10-30% larger files at the same
    CRF, which for short generated clips is a fair trade for "same request, same file".
    """
    options = {"crf": str(crf), "preset": preset}
    if reproducible:
        options["threads"] = str(REPRODUCIBLE_THREADS)
        options["x264-params"] = "mbtree=0"
    else:
        options["threads"] = str(encoder_threads())
    return options


def encode_mp4(
    path: Path,
    frames: Iterable[NDArray[np.uint8]],
    *,
    width: int,
    height: int,
    fps: int,
    audio: NDArray[np.float32] | None = None,
    sample_rate: int = 48000,
    crf: int = 23,
    preset: str = "veryfast",
    on_frame: Callable[[int], None] | None = None,
    reproducible: bool = True,
) -> int:
    """Encode RGB frames (and optional audio) into an H.264/AAC MP4 at `path`.

    `frames` are height x width x 3 RGB uint8 arrays; they are consumed lazily, so a generator
    keeps memory flat however long the clip. `audio`, if given, is float32 of shape
    (channels, samples) in [-1, 1] (1 or 2 channels); it is encoded as AAC alongside the video,
    interleaved by time so the file streams well. `on_frame(i)` runs after frame `i` has gone to
    the encoder; an exception from it (a cancellation) aborts the encode, removes the partial file
    and propagates. `reproducible` (the default) makes identical input give an identical file;
    turn it off for slightly smaller files and all-core encoding when that does not matter (see
    `x264_options`). Returns the number of frames written.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        # yuv420p subsamples chroma by two in both directions.
        raise ValueError(f"width and height must be positive and even (got {width}x{height})")
    if fps <= 0:
        raise ValueError(f"fps must be positive (got {fps})")
    planes = _audio_planes(audio) if audio is not None else None

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    container: OutputContainer = av.open(
        str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}
    )
    try:
        count = _encode(
            container,
            frames,
            width=width,
            height=height,
            fps=fps,
            planes=planes,
            sample_rate=sample_rate,
            options=x264_options(crf=crf, preset=preset, reproducible=reproducible),
            on_frame=on_frame,
        )
        container.close()
    except BaseException:
        # Close before deleting: the container holds the file open and its muxer state would
        # otherwise only be released by the garbage collector.
        with contextlib.suppress(Exception):
            container.close()
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return count


def _audio_planes(audio: NDArray[np.float32]) -> NDArray[np.float32]:
    """Validate audio and return it as contiguous float32 planes, clipped to [-1, 1]."""
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(
            f"audio must have shape (channels, samples) with 1 or 2 channels, got {audio.shape}"
        )
    planes: NDArray[np.float32] = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)
    return planes


def _encode(
    container: OutputContainer,
    frames: Iterable[NDArray[np.uint8]],
    *,
    width: int,
    height: int,
    fps: int,
    planes: NDArray[np.float32] | None,
    sample_rate: int,
    options: dict[str, str],
    on_frame: Callable[[int], None] | None,
) -> int:
    video: VideoStream = container.add_stream("libx264", rate=fps, options=options)
    # PyAV defaults to slice threads; x264's frame threads compress better at the same speed.
    video.codec_context.thread_type = ThreadType.FRAME
    video.width = width
    video.height = height
    video.pix_fmt = "yuv420p"
    video.time_base = Fraction(1, fps)
    video.codec_context.time_base = Fraction(1, fps)
    video.codec_context.framerate = Fraction(fps, 1)
    video.codec_context.colorspace = int(Colorspace.ITU709)
    video.codec_context.color_primaries = int(ColorPrimaries.BT709)
    video.codec_context.color_trc = int(ColorTrc.BT709)
    video.codec_context.color_range = int(ColorRange.MPEG)

    audio_stream: AudioStream | None = None
    if planes is not None:
        layout = "stereo" if planes.shape[0] == 2 else "mono"
        audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        audio_stream.time_base = Fraction(1, sample_rate)
        audio_stream.codec_context.time_base = Fraction(1, sample_rate)
        audio_stream.bit_rate = 128_000 if planes.shape[0] == 2 else 96_000
    audio_sent = 0  # samples handed to the AAC encoder so far

    def send_audio(until: int) -> None:
        """Encode whole encoder-sized frames of audio up to sample `until` (or all at the end)."""
        nonlocal audio_sent
        if audio_stream is None or planes is None:
            return
        total = planes.shape[1]
        size = audio_stream.codec_context.frame_size or 1024
        until = min(until, total)
        while audio_sent < until and (until - audio_sent >= size or until == total):
            chunk = planes[:, audio_sent : audio_sent + size]
            container.mux(audio_stream.encode(_audio_frame(chunk, audio_stream, audio_sent)))
            audio_sent += chunk.shape[1]

    count = 0
    for index, rgb in enumerate(frames):
        if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"frame {index} must be a {height}x{width}x3 uint8 array "
                f"(got {rgb.shape} {rgb.dtype})"
            )
        # Wrap the array without copying (the conversion below reads it once and writes a new
        # frame); at 4K that saves a 25 MB copy per frame over `from_ndarray`.
        frame = VideoFrame.from_numpy_buffer(np.ascontiguousarray(rgb), format="rgb24")
        # Explicit BT.709 conversion (see the module docstring).
        frame = frame.reformat(
            format="yuv420p",
            src_colorspace=Colorspace.ITU709,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
        )
        frame.pts = index
        frame.duration = 1
        frame.time_base = video.codec_context.time_base
        container.mux(video.encode(frame))
        count = index + 1
        # Keep audio within a frame of the video so the muxer interleaves them finely.
        send_audio(count * sample_rate // fps)
        if on_frame is not None:
            on_frame(index)

    container.mux(video.encode(None))
    if audio_stream is not None and planes is not None:
        send_audio(planes.shape[1])
        container.mux(audio_stream.encode(None))
    return count


def _audio_frame(chunk: NDArray[np.float32], stream: AudioStream, start: int) -> AudioFrame:
    """An AudioFrame in the encoder's sample format (planar for FFmpeg's AAC, packed otherwise)."""
    fmt = stream.codec_context.format
    name = fmt.name if fmt is not None else "fltp"
    layout = "stereo" if chunk.shape[0] == 2 else "mono"
    if name.endswith("p"):
        data = np.ascontiguousarray(chunk)
    else:
        # Packed formats want one row of interleaved samples: L0 R0 L1 R1 ...
        data = np.ascontiguousarray(chunk.T).reshape(1, -1)
    frame = AudioFrame.from_ndarray(data, format=name, layout=layout)
    frame.sample_rate = stream.codec_context.sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, frame.sample_rate)
    return frame


def probe_video(path: Path) -> VideoInfo:
    """Duration, size, frame rate, frame count and codecs of a video file."""
    container: InputContainer = av.open(str(path), mode="r")
    with container:
        return _probe(container, path)


def finish_clip(
    video_path: Path, thumb_path: Path, *, max_side: int = 640, quality: int = 85
) -> tuple[VideoInfo, tuple[int, int]]:
    """`probe_video` and `write_thumbnail` on one open of the file: what a worker does with
    every clip it stores, so ten thousand remote tasks finishing pay for one open each."""
    container: InputContainer = av.open(str(video_path), mode="r")
    with container:
        info = _probe(container, video_path)
        rgb = _first_frame_small(container, video_path, max_side)
    return info, _save_jpeg(rgb, thumb_path, quality)


def _probe(container: InputContainer, path: Path) -> VideoInfo:
    if not container.streams.video:
        raise ValueError(f"{path.name} has no video stream")
    video: VideoStream = container.streams.video[0]
    rate = video.average_rate or video.guessed_rate or video.base_rate
    fps = float(rate) if rate else 0.0
    frame_count = int(video.frames)
    if frame_count <= 0:
        frame_count = _count_frames(path)
    if rate and frame_count > 0:
        duration = float(frame_count / rate)
    elif video.duration is not None and video.time_base is not None:
        duration = float(video.duration * video.time_base)
    else:
        duration = (container.duration or 0) / av.time_base

    audio_codec: str | None = None
    audio_duration: float | None = None
    has_audio = bool(container.streams.audio)
    if has_audio:
        audio: AudioStream = container.streams.audio[0]
        audio_codec = str(audio.codec_context.name)
        if audio.duration is not None and audio.time_base is not None:
            audio_duration = float(audio.duration * audio.time_base)
        elif audio.frames and audio.codec_context.sample_rate:
            audio_duration = audio.frames * 1024 / audio.codec_context.sample_rate

    pix_fmt = video.codec_context.pix_fmt or ""
    return VideoInfo(
        duration=duration,
        width=int(video.codec_context.width),
        height=int(video.codec_context.height),
        fps=fps,
        frame_count=frame_count,
        has_audio=has_audio,
        video_codec=str(video.codec_context.name),
        audio_codec=audio_codec,
        pix_fmt=str(pix_fmt),
        audio_duration=audio_duration,
    )


def _count_frames(path: Path) -> int:
    """Count video packets by demuxing (for containers whose header has no frame count)."""
    container: InputContainer = av.open(str(path), mode="r")
    with container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def decode_frames(path: Path) -> Iterator[NDArray[np.uint8]]:
    """Decode every video frame as an RGB uint8 array (height x width x 3), in order."""
    container: InputContainer = av.open(str(path), mode="r")
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield cast("NDArray[np.uint8]", frame.to_ndarray(format="rgb24"))


def write_thumbnail(
    video_path: Path, out_path: Path, *, max_side: int = 640, quality: int = 85
) -> tuple[int, int]:
    """Write the first frame of a video as a JPEG no larger than `max_side`; return its size."""
    container: InputContainer = av.open(str(video_path), mode="r")
    with container:
        rgb = _first_frame_small(container, video_path, max_side)
    return _save_jpeg(rgb, out_path, quality)


def _first_frame_small(
    container: InputContainer, video_path: Path, max_side: int
) -> NDArray[np.uint8]:
    """The first video frame as RGB, fitted within `max_side`.

    The frame is scaled by libswscale (area averaging) straight from the decoder's format, so a
    4K frame is never converted to RGB at full size: a thousand tasks finishing at once make a
    thousand thumbnails."""
    first = _first_frame(container, video_path)
    width, height = _fit_within(first.width, first.height, max_side)
    small = first.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    return cast("NDArray[np.uint8]", small.to_ndarray())


def _first_frame(container: InputContainer, video_path: Path) -> VideoFrame:
    """The first frame of the first video stream, decoded on one thread.

    A clip normally opens with a keyframe; it is decoded alone and the decoder drained at once,
    rather than fed the packets after it until its reordering delay (B-frames) lets the first
    frame out: a quarter of the time on a 720p clip. A stream that opens otherwise is decoded
    from the start, the ordinary way."""
    stream = container.streams.video[0]
    codec = stream.codec_context
    codec.thread_count = 1
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.is_keyframe:
            frames = codec.decode(packet) or codec.decode(None)
            if frames:
                return frames[0]
        break
    # The drained decoder takes no more packets: decode from the start on a fresh open.
    with av.open(str(video_path), mode="r") as again:
        video = again.streams.video[0]
        video.codec_context.thread_count = 1
        first: VideoFrame | None = next(iter(again.decode(video)), None)
    if first is None:
        raise ValueError(f"{video_path.name} has no decodable video frame")
    return first


def _save_jpeg(rgb: NDArray[np.uint8], out_path: Path, quality: int) -> tuple[int, int]:
    image = Image.fromarray(rgb)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="JPEG", quality=quality)
    return image.width, image.height


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of `width` x `height` scaled to fit a `max_side` square (never enlarged)."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))
