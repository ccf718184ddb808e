"""The `diffusers` provider: open-weight video models (Wan 2.x, LTX-Video, LTX-2) on local GPUs.

Each model entry names a family and a local checkpoint directory (`catalog.py` validates the
entries; `options.py` types their options, `checkpoint.py` holds the size and frame-count rules,
`authors.py` the settings each checkpoint's authors run it with; `plan.py` maps a request onto
the model). A worker process owns one device (`reelserve worker --device cuda:N`); the first
task of a model loads its pipeline there, in a thread, and it stays loaded (warm) for every
later task (`runtime.py`; loading and configuring it is `loading.py`). The pipelines of the
other modes (image-to-video, first+last frame) are built over the loaded one's modules
(`loading.variant`), sharing its weights in their dtypes.

One inference runs at a time per worker (a lock around the device), in a thread, never on the event
loop. The denoising-step callback reports progress and is where cancellation and worker shutdown
take effect, between two steps. Running out of memory fails the task with `out_of_memory`, and the
device's cache is emptied so the next task finds the worker as healthy as before.

Samples: each sample is its own pipeline call with its own seed (`seed + index`, the seed the result
reports), so any sample can be reproduced alone. With `batch_samples`, text-to-video samples are
one batched call instead (`num_videos_per_prompt`, one generator per sample).

torch and diffusers are imported lazily, inside the functions that need them: the base install runs
without them, and `build_providers` only creates this provider where they are installed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.images import DEFAULT_MAX_PIXELS, ImageInputError, decode_image, fit_image
from reelserve.media.threads import in_media_thread
from reelserve.media.video import encode_mp4
from reelserve.providers.base import (
    Clip,
    InputImages,
    ProviderBase,
    ProviderError,
    RunContext,
)
from reelserve.providers.diffusers.catalog import LocalModel
from reelserve.providers.diffusers.checks import check_runtime_options
from reelserve.providers.diffusers.plan import Rendered, RenderPlan, plan_render
from reelserve.providers.diffusers.runtime import Runtime

log = logging.getLogger("reelserve.providers.diffusers.provider")

# Share of a task's progress that denoising stands for; decoding and encoding take the rest.
DENOISE_SHARE = 0.9
LOCK_POLL_SECONDS = 0.25


class DiffusersProvider(ProviderBase):
    """Runs local diffusers pipelines; see the module docstring."""

    name = "diffusers"

    def __init__(self, models: dict[str, LocalModel], *, device: str | None = None) -> None:
        check_runtime_options(models)
        self.models = models
        self.device = device
        self._runtimes: dict[str, Runtime] = {}
        self._load_lock = threading.Lock()
        self._device_lock = threading.Lock()

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        model = self.models.get(spec.model)
        if model is None:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{spec.model}" is not a local model on this worker',
            )
        plan = plan_render(model, spec)
        runtime = await asyncio.to_thread(self._runtime, model)
        first, last = await asyncio.to_thread(
            _fit_inputs, ctx.images, plan.width, plan.height, spec.resize_mode
        )
        if plan.mode != "t2v" and first is None:
            raise ProviderError(ErrorCode.INVALID_IMAGE, "the first frame image is missing")
        groups: list[list[int]]
        if model.options.batch_samples and plan.mode == "t2v":
            groups = [list(range(len(plan.seeds)))]
        else:
            groups = [[i] for i in range(len(plan.seeds))]

        clips: list[Clip] = []
        total = len(plan.seeds)
        for group in groups:
            ctx.check_cancelled()
            done_before = group[0]

            def progress(
                fraction: float, done_before: int = done_before, size: int = len(group)
            ) -> None:
                ctx.report_progress(DENOISE_SHARE * (done_before + fraction * size) / total)

            rendered = await asyncio.to_thread(
                self._generate,
                runtime,
                plan,
                [plan.seeds[i] for i in group],
                first,
                last,
                ctx,
                progress,
            )
            for index, sample in zip(group, rendered, strict=True):
                path = ctx.workdir / f"sample_{index}.mp4"
                await in_media_thread(_encode, path, sample, plan, ctx)
                clips.append(Clip(path=path, seed=plan.seeds[index]))
                ctx.report_progress(DENOISE_SHARE + (1 - DENOISE_SHARE) * (index + 1) / total)
        return clips

    # -- in worker threads --------------------------------------------------------------------

    def _runtime(self, model: LocalModel) -> Runtime:
        """The model's loaded pipeline, loading it on first use (once per worker process)."""
        with self._load_lock:
            runtime = self._runtimes.get(model.entry.id)
            if runtime is None:
                runtime = Runtime.load(model, self.device)
                self._runtimes[model.entry.id] = runtime
            return runtime

    def _generate(
        self,
        runtime: Runtime,
        plan: RenderPlan,
        seeds: list[int],
        first: Image.Image | None,
        last: Image.Image | None,
        ctx: RunContext,
        progress: Callable[[float], None],
    ) -> list[Rendered]:
        # Wait for the device without blocking cancellation: another task may be rendering.
        while not self._device_lock.acquire(timeout=LOCK_POLL_SECONDS):
            ctx.check_cancelled()
        try:
            ctx.check_cancelled()
            return runtime.generate(plan, seeds, first, last, ctx, progress)
        finally:
            self._device_lock.release()


def _fit_inputs(
    images: InputImages, width: int, height: int, mode: str
) -> tuple[Image.Image | None, Image.Image | None]:
    """The request's images fitted (pad or crop, as asked) to the model's own size.

    The worker fitted them to the request's size; the model's differs, so the original bytes are
    fitted again rather than the fitted frame resized (which would pad twice or crop twice).
    """
    resize: Literal["pad", "crop"] = "crop" if mode == "crop" else "pad"

    def fit(original: tuple[bytes, str] | None, fitted: Any, param: str) -> Image.Image | None:
        if original is not None:
            try:
                image = decode_image(original[0], param, max_pixels=DEFAULT_MAX_PIXELS)
            except ImageInputError as exc:
                raise ProviderError(ErrorCode.INVALID_IMAGE, exc.message) from None
        elif fitted is not None:
            image = Image.fromarray(np.asarray(fitted, dtype=np.uint8))
        else:
            return None
        return Image.fromarray(fit_image(image, width, height, resize))

    return (
        fit(images.first_bytes, images.first, "first_frame_image"),
        fit(images.last_bytes, images.last, "last_frame_image"),
    )


def _encode(path: Path, sample: Rendered, plan: RenderPlan, ctx: RunContext) -> None:
    frames, height, width = sample.frames.shape[0], sample.frames.shape[1], sample.frames.shape[2]
    if (frames, width, height) != (plan.frames, plan.width, plan.height):
        log.warning(
            "pipeline returned %d frames of %dx%d where %d of %dx%d were asked",
            frames,
            width,
            height,
            plan.frames,
            plan.width,
            plan.height,
        )

    def on_frame(_: int) -> None:
        ctx.check_cancelled()

    encode_mp4(
        path,
        iter(sample.frames),
        width=width,
        height=height,
        fps=plan.fps,
        audio=sample.audio,
        sample_rate=sample.sample_rate,
        on_frame=on_frame,
    )
