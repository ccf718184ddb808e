"""One loaded local model on one device, and running it.

`Runtime` holds the base pipeline and its per-mode variants (built on first use), one scheduler
per flow shift, and `generate`: one pipeline call for one or more seeds, with CPU generators (the
same seed gives the same noise on any device), the entry's guidance and call arguments, each
family's way of taking the first (and last) frame, and a step callback that reports progress and
is where cancellation and worker shutdown take effect, between two steps. Running out of memory
fails the call with `out_of_memory` after the device's cache is emptied.

torch and diffusers are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from reelserve.domain.task import ErrorCode
from reelserve.providers.base import ProviderError, RunContext
from reelserve.providers.diffusers.catalog import LocalModel
from reelserve.providers.diffusers.loading import (
    check_geometry,
    configure,
    free_memory,
    is_out_of_memory,
    load_base,
    variant,
)
from reelserve.providers.diffusers.plan import PIPELINES, Rendered, RenderPlan

log = logging.getLogger("reelserve.providers.diffusers.provider")


class Runtime:
    """One loaded model on one device: the base pipeline and its per-mode variants."""

    def __init__(self, model: LocalModel, device: str, base: Any) -> None:
        self.model = model
        self.device = device
        self.base = base
        self._pipelines: dict[str, Any] = {type(base).__name__: base}
        self._offloaded: str | None = None
        # One scheduler per flow shift, built on first use from the checkpoint's own; swapped
        # into the pipeline before each call, under the device lock (one call at a time).
        self._scheduler = base.scheduler
        self._schedulers: dict[float, Any] = {}

    @classmethod
    def load(cls, model: LocalModel, device: str | None) -> Runtime:
        """Load the model onto `device` (`loading.py`), configured and, with `compile`, warmed
        up."""
        options = model.options
        base, device = load_base(model, device)
        runtime = cls(model, device, base)
        check_geometry(model, base)
        configure(model, base, device)
        if options.compile and options.compile_warmup:
            runtime._warm_up()
        log.info("model %s loaded", model.entry.id)
        return runtime

    def _warm_up(self) -> None:
        """One short render at the entry's first size, so that compilation (and the VAE
        decode's first run) happens at load, timed, instead of in the first task."""
        entry = self.model.entry
        width, height = entry.render_size(entry.resolutions[0])
        mode = entry.modes[0]
        gray = Image.new("RGB", (width, height), (128, 128, 128))
        plan = RenderPlan(
            mode=mode,
            prompt="warm-up",
            negative_prompt=None,
            width=width,
            height=height,
            frames=self.model.frames(entry.default_duration),
            fps=entry.fps,
            seeds=(0,),
            audio=False,
            flow_shift=self.model.flow_shift(str(entry.resolutions[0]), width, height),
        )
        started = time.perf_counter()
        images = (gray, gray) if mode != "t2v" else (None, None)
        self.generate(plan, [0], images[0], images[1], _NEVER_CANCELLED, lambda _: None)
        log.info(
            "model %s: compiled and warmed up at %dx%d, %d frames, %s mode in %.1f s",
            entry.id,
            width,
            height,
            plan.frames,
            mode,
            time.perf_counter() - started,
        )

    def pipeline(self, mode: str) -> Any:
        """The pipeline of a mode, built from the loaded one (shared weights) on first use."""
        name = PIPELINES[self.model.options.family][mode]
        pipe = self._pipelines.get(name)
        if pipe is None:
            import diffusers

            pipe = variant(getattr(diffusers, name), self.base)
            self._pipelines[name] = pipe
        offload = self.model.options.cpu_offload
        if offload != "none" and self._offloaded != name:
            # Offload hooks belong to a pipeline; switching pipelines re-installs them.
            if offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.enable_sequential_cpu_offload(device=self.device)
            self._offloaded = name
        return pipe

    def scheduler(self, shift: float | None) -> Any:
        """The checkpoint's scheduler with another flow shift (one instance per shift)."""
        if shift is None:
            return self._scheduler
        scheduler = self._schedulers.get(shift)
        if scheduler is None:
            config = self._scheduler.config
            key = "flow_shift" if "flow_shift" in config else "shift"
            scheduler = type(self._scheduler).from_config(config, **{key: shift})
            self._schedulers[shift] = scheduler
        return scheduler

    def generate(
        self,
        plan: RenderPlan,
        seeds: list[int],
        first: Image.Image | None,
        last: Image.Image | None,
        ctx: RunContext,
        progress: Callable[[float], None],
    ) -> list[Rendered]:
        import torch

        options = self.model.options
        family = options.family
        pipe = self.pipeline(plan.mode)
        pipe.scheduler = self.scheduler(plan.flow_shift)  # under the device lock
        steps = self.model.steps()

        def on_step(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            ctx.check_cancelled()  # raises out of the denoising loop: cancel or shutdown
            total = getattr(pipeline, "_num_timesteps", None) or steps
            progress(min(1.0, (step + 1) / total))
            return {}

        # CPU generators: the same seed gives the same noise on any device.
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "negative_prompt": plan.negative_prompt,
            "height": plan.height,
            "width": plan.width,
            "num_frames": plan.frames,
            "num_inference_steps": steps,
            "num_videos_per_prompt": len(seeds),
            "generator": generators if len(generators) > 1 else generators[0],
            "output_type": "np",
            "callback_on_step_end": on_step,
        }
        guidance, guidance_2 = self.model.guidance()
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        if guidance_2 is not None and getattr(pipe.config, "boundary_ratio", None) is not None:
            kwargs["guidance_scale_2"] = guidance_2  # Wan 2.2 A14B's low-noise expert
        accepted = _call_parameters(type(pipe))
        for key, value in self.model.call_arguments().items():
            if key in accepted:
                kwargs[key] = value
        if options.max_sequence_length is not None:
            kwargs["max_sequence_length"] = options.max_sequence_length
        if family in ("ltx", "ltx2"):
            kwargs["frame_rate"] = plan.fps
        kwargs.update(_image_arguments(family, plan, first, last))

        out_of_memory = False
        try:
            output = pipe(**kwargs)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True
            log.warning("model %s ran out of memory: %s", self.model.entry.id, exc)
        if out_of_memory:
            # Outside the except block: the exception (and the tensors its frames hold) is gone.
            free_memory(self.device)
            raise ProviderError(
                ErrorCode.OUT_OF_MEMORY,
                f'model "{self.model.entry.id}" ran out of memory on this worker rendering '
                f"{plan.width}x{plan.height}, {plan.frames} frames, {len(seeds)} sample(s) at "
                "once; try a lower resolution, a shorter duration or fewer samples",
            )
        frames = np.asarray(output.frames)
        audio = getattr(output, "audio", None)
        rate = int(
            getattr(getattr(pipe, "vocoder", None), "config", {}).get("output_sampling_rate", 0)
            or 0
        )
        rendered = []
        for i in range(len(seeds)):
            sample = np.clip(frames[i] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            track = None
            if plan.audio and audio is not None and rate > 0:
                track = _fit_audio(audio[i].float().cpu().numpy(), round(plan.seconds * rate))
            rendered.append(Rendered(frames=sample, audio=track, sample_rate=rate or 48000))
        return rendered


class _NeverCancelled:
    """The warm-up render's context: nothing can cancel it."""

    def check_cancelled(self) -> None:
        return None


_NEVER_CANCELLED: Any = _NeverCancelled()


def _call_parameters(cls: Any) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__call__).parameters) - {"self", "kwargs"}


def _image_arguments(
    family: str, plan: RenderPlan, first: Image.Image | None, last: Image.Image | None
) -> dict[str, Any]:
    """How each family takes the first (and last) frame."""
    if plan.mode == "t2v" or first is None:
        return {}
    if plan.mode == "i2v" or family == "wan":
        args: dict[str, Any] = {"image": first}
        if plan.mode == "flf2v":
            args["last_image"] = last
        return args
    if family == "ltx":
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        return {
            "conditions": [
                LTXVideoCondition(image=first, frame_index=0),
                LTXVideoCondition(image=last, frame_index=plan.frames - 1),
            ]
        }
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    assert last is not None  # flf2v requests always carry both images

    # LTX-2 indexes conditions by *latent* frame, and skips (with a warning) one past the last
    # latent frame, so the last frame is index -1, not the pixel index plan.frames - 1.
    return {
        "conditions": [
            LTX2VideoCondition(frames=first, index=0),
            LTX2VideoCondition(frames=last, index=-1),
        ]
    }


def _fit_audio(audio: NDArray[np.float32], samples: int) -> NDArray[np.float32]:
    """(channels, n) audio cut or padded with silence to exactly `samples` (at most stereo)."""
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    audio = audio[:2, :samples]
    if audio.shape[1] < samples:
        audio = np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))
    return np.ascontiguousarray(audio, dtype=np.float32)
