"""Videos made elsewhere (an upstream's MP4s): which streams a file has, and dropping its audio
track by remuxing, without re-encoding (the pictures stay exactly as the upstream made them).

Blocking (file I/O with PyAV): call these from a worker thread.
"""

from __future__ import annotations

from pathlib import Path

import av


class UnreadableVideo(Exception):
    """The file is not a video PyAV can open (the message says why)."""


def stream_kinds(path: Path) -> tuple[bool, bool]:
    """Whether the file has a video stream and whether it has an audio stream."""
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video), bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as exc:
        raise UnreadableVideo(str(exc)) from None


def drop_audio(path: Path) -> None:
    """Remux the video stream alone (no re-encoding) and replace the file; the MP4 keeps
    `faststart` (its index first), like every clip this server hands out."""
    out_path = path.with_name(f".{path.name}.noaudio")
    with (
        av.open(str(path)) as source,
        av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        video_in = source.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        for packet in source.demux(video_in):
            if packet.dts is None:
                continue
            packet.stream = video_out
            out.mux(packet)
    out_path.replace(path)
