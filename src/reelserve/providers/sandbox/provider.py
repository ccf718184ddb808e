"""The offline sandbox provider: a procedural renderer that obeys every request parameter.

It exists so clients can be built and tested without a GPU, a network or an upstream bill: it needs
no weights, runs on a couple of CPU cores, and its output is a real H.264/AAC MP4 whose properties
(size, aspect ratio, duration, frame rate, sample count, seed, audio, first and last frame) are
exactly what was asked for. The picture is recognisably *about* the request:

* the prompt picks the palette (colour words in it such as "red" or "teal" are used as such, the
  rest comes from a hash of the prompt), the background pattern and the kinds of shapes, and the
  prompt itself is written on the frame;
* the seed picks the layout and motion of the shapes and the speed of the background, so each seed
  (and hence each sample of a task) is a different video, while the same request and seed give a
  bit-identical video;
* a negative prompt nudges the background pattern (slightly softer stripes at another angle);
* image-to-video starts exactly on the given first frame and ends exactly on the last one if given.

Speed: the background is computed once per clip as a horizontally periodic texture and each frame
is a window into it (a memory copy), the shapes are anti-aliased sprites drawn once and pasted with
Pillow's C blending, and the caption is one pre-rendered layer; nothing loops over pixels in Python
(`scene.py`, `drawing.py`; the frames of each mode are `frames.py`, the soundtrack `audio.py`).
Encoding uses x264's `veryfast` preset (see `DEFAULT_PRESET`) in reproducible mode, so the same
request and seed give the same file, not only the same pixels. Rendering and encoding block, so
`SandboxProvider.run` does them in a worker thread, which x264's own threads overlap with.
"""

from __future__ import annotations

from pathlib import Path

from reelserve.domain.spec import GenerationSpec
from reelserve.media.threads import in_media_thread
from reelserve.media.video import encode_mp4
from reelserve.providers.base import Clip, ProviderBase, RunContext
from reelserve.providers.sandbox.audio import SAMPLE_RATE, render_audio
from reelserve.providers.sandbox.frames import render_frames

# x264 preset for sandbox clips. Measured on 2 cores, 8-second clips, render + encode:
#   1080p text-to-video:            veryfast 4.5 s / 1.27 MB, superfast 3.2 s / 1.25 MB,
#                                   ultrafast 2.6 s / 1.56 MB
#   720p image-to-video (a photo):  veryfast 3.8 s / 1.8 MB,  superfast 3.4 s / 2.5 MB,
#                                   ultrafast 3.4 s / 9.9 MB
# The faster presets save a second or two where x264 dominates (flat procedural frames), little
# where rendering does, and make textured content (anything from an input image) up to five times
# larger, which every client then downloads. `veryfast` is the balance.
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 23


class SandboxProvider(ProviderBase):
    """The `sandbox` provider: renders every sample locally, on the CPU, in a worker thread.

    `preset` and `crf` are x264's; the default `veryfast` at CRF 23 is chosen from the
    measurements noted at `DEFAULT_PRESET` (8 s at 720p in about 2 s on two cores).
    """

    name = "sandbox"
    kind = "compute"  # renders here, on the CPU: the worker's compute slots

    def __init__(self, *, preset: str = DEFAULT_PRESET, crf: int = DEFAULT_CRF) -> None:
        self.preset = preset
        self.crf = crf

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        """Render `spec.sample_count` clips into `ctx.workdir` as `sample_<i>.mp4`.

        Nothing is checkpointed: a sample takes seconds, and a resumed attempt starts with a fresh
        work directory anyway, so rendering again is both cheaper and simpler than resuming.
        """
        clips: list[Clip] = []
        for index in range(spec.sample_count):
            ctx.check_cancelled()
            path = ctx.workdir / f"sample_{index}.mp4"
            await in_media_thread(self._render_sample, spec, index, ctx, path)
            clips.append(Clip(path=path, seed=spec.sample_seed(index)))
        ctx.report_progress(1.0)
        return clips

    def _render_sample(self, spec: GenerationSpec, index: int, ctx: RunContext, path: Path) -> None:
        ctx.check_cancelled()  # a stop asked for while this thread was waiting to start
        total = spec.frame_count * spec.sample_count
        done_before = index * spec.frame_count

        def on_frame(frame_index: int) -> None:
            ctx.check_cancelled()
            ctx.report_progress((done_before + frame_index + 1) / total)

        audio = render_audio(spec, index, SAMPLE_RATE) if spec.generate_audio else None
        encode_mp4(
            path,
            render_frames(spec, index, ctx.images),
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            audio=audio,
            sample_rate=SAMPLE_RATE,
            crf=self.crf,
            preset=self.preset,
            on_frame=on_frame,
        )
