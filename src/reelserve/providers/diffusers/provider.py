"""The `diffusers` provider: open-weight video models (Wan 2.x, LTX-Video, LTX-2) on local GPUs.

Each model entry names a family and a local checkpoint directory (see `diffusers_options`, which
also holds the size and frame-count rules). A worker process owns one device (`reelserve worker
--device cuda:N`); the first task of a model loads its pipeline there, in a thread, and it stays
loaded (warm) for every later task. The pipelines of the other modes (image-to-video, first+last
frame) are built over the loaded one's modules (`_variant`), sharing its weights in their dtypes.

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
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.images import DEFAULT_MAX_PIXELS, ImageInputError, decode_image, fit_image
from reelserve.media.video import encode_mp4
from reelserve.providers.base import (
    Clip,
    InputImages,
    ProviderBase,
    ProviderError,
    RunContext,
)
from reelserve.providers.diffusers.options import (
    RESERVED_CALL_ARGUMENTS,
    CacheOption,
    DistillLora,
    FirstBlockCache,
    LocalModel,
    LocalModelError,
    MagCache,
)

log = logging.getLogger("reelserve.providers.diffusers.provider")

# The pipeline class of each family and mode (diffusers 0.42 names).
PIPELINES: dict[str, dict[str, str]] = {
    "wan": {
        "t2v": "WanPipeline",
        "i2v": "WanImageToVideoPipeline",
        "flf2v": "WanImageToVideoPipeline",
    },
    "ltx": {
        "t2v": "LTXPipeline",
        "i2v": "LTXImageToVideoPipeline",
        "flf2v": "LTXConditionPipeline",
    },
    "ltx2": {
        "t2v": "LTX2Pipeline",
        "i2v": "LTX2ImageToVideoPipeline",
        "flf2v": "LTX2ConditionPipeline",
    },
}
# Share of a task's progress that denoising stands for; decoding and encoding take the rest.
DENOISE_SHARE = 0.9
LOCK_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class RenderPlan:
    """What one task asks of the model, mapped onto what the model can render."""

    mode: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    frames: int
    fps: int
    seeds: tuple[int, ...]
    audio: bool
    flow_shift: float | None = None  # the scheduler's shift at this size; None: the checkpoint's

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def plan_render(model: LocalModel, spec: GenerationSpec) -> RenderPlan:
    """The model's size, frame count and per-sample seeds for a request (pure)."""
    width, height = model.entry.render_size(spec.resolution, spec.aspect_ratio)
    return RenderPlan(
        mode=spec.mode,
        prompt=spec.prompt,
        negative_prompt=model.negative_prompt(spec.negative_prompt),
        width=width,
        height=height,
        frames=model.frames(spec.duration),
        fps=model.entry.fps,
        seeds=tuple(spec.sample_seed(i) for i in range(spec.sample_count)),
        audio=spec.generate_audio,
        flow_shift=model.flow_shift(spec.resolution, width, height),
    )


@dataclass(frozen=True)
class Rendered:
    """One sample: RGB frames (frames x height x width x 3) and, for LTX-2, its soundtrack."""

    frames: NDArray[np.uint8]
    audio: NDArray[np.float32] | None
    sample_rate: int


class DiffusersProvider(ProviderBase):
    """Runs local diffusers pipelines; see the module docstring."""

    name = "diffusers"

    def __init__(self, models: dict[str, LocalModel], *, device: str | None = None) -> None:
        check_runtime_options(models)
        self.models = models
        self.device = device
        self._runtimes: dict[str, _Runtime] = {}
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
                await asyncio.to_thread(_encode, path, sample, plan, ctx)
                clips.append(Clip(path=path, seed=plan.seeds[index]))
                ctx.report_progress(DENOISE_SHARE + (1 - DENOISE_SHARE) * (index + 1) / total)
        return clips

    # -- in worker threads --------------------------------------------------------------------

    def _runtime(self, model: LocalModel) -> _Runtime:
        """The model's loaded pipeline, loading it on first use (once per worker process)."""
        with self._load_lock:
            runtime = self._runtimes.get(model.entry.id)
            if runtime is None:
                runtime = _Runtime.load(model, self.device)
                self._runtimes[model.entry.id] = runtime
            return runtime

    def _generate(
        self,
        runtime: _Runtime,
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


class _Runtime:
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
    def load(cls, model: LocalModel, device: str | None) -> _Runtime:
        import torch

        options = model.options
        entry_id = model.entry.id
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}" is set to run on {device}, but this worker sees no CUDA GPU',
            )
        if not (options.checkpoint / "model_index.json").is_file():
            log.error("model %s: no diffusers checkpoint in %s", entry_id, options.checkpoint)
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}" is not installed on this worker (its checkpoint directory '
                "holds no model_index.json); the worker's log names the directory",
            )
        dtype = _dtype(options.dtype, device)
        # One dtype per component: the model's, apart from those its authors keep in another
        # (Wan's VAE and image encoder in float32) or the entry names in component_dtypes.
        dtypes = {"default": dtype}
        for name, value in model.component_dtypes().items():
            dtypes[name] = _dtype(value, device)
        log.info("loading %s from %s on %s (%s)", entry_id, options.checkpoint, device, dtypes)
        try:
            from diffusers import DiffusionPipeline

            base = DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
                str(options.checkpoint), dtype=dtypes, local_files_only=True
            )
        except Exception as exc:
            if _is_out_of_memory(exc):
                _free_memory(device)
                raise ProviderError(
                    ErrorCode.OUT_OF_MEMORY,
                    f'model "{entry_id}" does not fit in the memory of {device}',
                ) from None
            log.exception("model %s: loading %s failed", entry_id, options.checkpoint)
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}" could not be loaded on this worker; the worker\'s log has '
                "the details",
            ) from None
        runtime = cls(model, device, base)
        runtime._check_geometry()
        runtime._configure()
        if options.compile and options.compile_warmup:
            runtime._warm_up()
        log.info("model %s loaded", entry_id)
        return runtime

    def _check_geometry(self) -> None:
        """The loaded pipeline must agree with the rules the catalog was validated against."""
        base = self.base
        temporal = getattr(base, "vae_scale_factor_temporal", None) or getattr(
            base, "vae_temporal_compression_ratio", None
        )
        if temporal is not None and int(temporal) != self.model.geometry.temporal:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{self.model.entry.id}": its VAE compresses time {temporal}x, not the '
                f"{self.model.geometry.temporal}x its catalog entry was validated for; restart the "
                "servers so they read the checkpoint",
            )

    def _transformers(self) -> list[Any]:
        return [
            m
            for m in (
                getattr(self.base, "transformer", None),
                getattr(self.base, "transformer_2", None),
            )
            if m is not None
        ]

    def _configure(self) -> None:
        """Device placement and the optional speed settings of the model entry."""
        options = self.model.options
        entry_id = self.model.entry.id
        if options.attention_backend:
            try:
                for transformer in self._transformers():
                    transformer.set_attention_backend(options.attention_backend)
            except Exception as exc:
                raise ProviderError(
                    ErrorCode.PROVIDER_NOT_CONFIGURED,
                    f'model "{entry_id}": attention_backend "{options.attention_backend}" is not '
                    f"usable on this worker ({exc})",
                ) from None
        if options.vae_tiling:
            self.base.vae.enable_tiling()
        if options.cpu_offload == "none":
            self.base.to(self.device)
        if options.distill_lora is not None:
            self._fuse_lora(options.distill_lora)
        if options.cache is not None:
            config = _cache_config(options.cache, self.model.steps())
            for transformer in self._transformers():
                transformer.enable_cache(config)
            log.info("model %s: %s cache on the transformer", entry_id, options.cache.kind)
        if options.compile:
            for transformer in self._transformers():
                transformer.compile_repeated_blocks(fullgraph=True)

    def _fuse_lora(self, distill: DistillLora) -> None:
        """Load the distilled LoRA(s) from local files, fuse them into the transformer(s) and
        drop the LoRA layers, so that a step costs what it cost before."""
        entry_id = self.model.entry.id
        base = self.base
        if not hasattr(base, "load_lora_weights"):
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}": {type(base).__name__} cannot load LoRA weights',
            )
        files = [("transformer", distill.path)]
        if distill.path_2 is not None:
            files.append(("transformer_2", distill.path_2))
        started = time.perf_counter()
        try:
            for component, path in files:
                if not path.is_file():
                    raise FileNotFoundError(f"no file {path}")
                base.load_lora_weights(
                    str(path.parent),
                    weight_name=path.name,
                    adapter_name=f"distill_{component}",
                    local_files_only=True,
                    **({"load_into_transformer_2": True} if component == "transformer_2" else {}),
                )
            base.fuse_lora(lora_scale=distill.scale, components=[c for c, _ in files])
            base.unload_lora_weights()
        except Exception as exc:
            log.exception("model %s: the distill LoRA could not be fused", entry_id)
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}": options.distill_lora could not be loaded on this worker '
                f"({str(exc).splitlines()[0][:200]})",
            ) from None
        log.info(
            "model %s: distill LoRA %s fused in %.1f s (%d steps, guidance %s)",
            entry_id,
            ", ".join(str(p) for _, p in files),
            time.perf_counter() - started,
            self.model.steps(),
            distill.guidance_scale,
        )

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

            pipe = _variant(getattr(diffusers, name), self.base)
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
            if not _is_out_of_memory(exc):
                raise
            out_of_memory = True
            log.warning("model %s ran out of memory: %s", self.model.entry.id, exc)
        if out_of_memory:
            # Outside the except block: the exception (and the tensors its frames hold) is gone.
            _free_memory(self.device)
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


# -- helpers -------------------------------------------------------------------------------------


class _NeverCancelled:
    """The warm-up render's context: nothing can cancel it."""

    def check_cancelled(self) -> None:
        return None


_NEVER_CANCELLED: Any = _NeverCancelled()


def _cache_config(cache: CacheOption, steps: int) -> Any:
    """The diffusers cache config of a model entry's `cache` option."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if isinstance(cache, FirstBlockCache):
        return FirstBlockCacheConfig(threshold=cache.threshold)  # type: ignore[no-untyped-call]
    if isinstance(cache, MagCache):
        return MagCacheConfig(  # type: ignore[no-untyped-call]
            threshold=cache.threshold,
            max_skip_steps=cache.max_skip_steps,
            retention_ratio=cache.retention_ratio,
            num_inference_steps=steps,
            mag_ratios=list(cache.mag_ratios),
        )
    return TaylorSeerCacheConfig(  # type: ignore[no-untyped-call]
        cache_interval=cache.cache_interval,
        disable_cache_before_step=cache.disable_cache_before_step,
        disable_cache_after_step=cache.disable_cache_after_step,
        max_order=cache.max_order,
        cache_identifiers=list(cache.cache_identifiers),
    )


def _call_parameters(cls: Any) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__call__).parameters) - {"self", "kwargs"}


def check_runtime_options(models: dict[str, LocalModel]) -> None:
    """The options only diffusers itself can judge, at startup: `pipeline_kwargs` against the
    `__call__` signatures of the pipelines the model runs, and `attention_backend` against the
    backends diffusers has. Raises `LocalModelError` naming the model, the option, what it may
    be and what it was."""
    import diffusers
    from diffusers.models.attention_dispatch import AttentionBackendName

    backends = sorted(b.value for b in AttentionBackendName)
    for model in models.values():
        where = f'model "{model.entry.id}"'
        options = model.options
        if options.attention_backend is not None and options.attention_backend not in backends:
            raise LocalModelError(
                f"{where}: options.attention_backend must be one of {', '.join(backends)} "
                f"(got {options.attention_backend!r})"
            )
        if not options.pipeline_kwargs:
            continue
        classes = sorted({PIPELINES[options.family][mode] for mode in model.entry.modes})
        signatures = {name: _signature(getattr(diffusers, name)) for name in classes}
        allowed: dict[str, Any] = {}
        for parameters in signatures.values():
            for key, parameter in parameters.items():
                if key not in RESERVED_CALL_ARGUMENTS:
                    allowed.setdefault(key, parameter.default)
        for key, value in options.pipeline_kwargs.items():
            if key not in allowed:
                raise LocalModelError(
                    f"{where}: options.pipeline_kwargs.{key} is not an argument of "
                    f"{' or '.join(classes)}; allowed: {', '.join(sorted(allowed))}"
                )
            expected, given = _kind(allowed[key]), _kind(value)
            fits = expected in (None, given) or (expected, given) == ("number", "integer")
            if value is not None and not fits:
                raise LocalModelError(
                    f"{where}: options.pipeline_kwargs.{key} must be a {expected} like the "
                    f"pipeline's default {allowed[key]!r} (got {value!r})"
                )


def _signature(cls: Any) -> dict[str, Any]:
    import inspect

    parameters = inspect.signature(cls.__call__).parameters
    return {k: p for k, p in parameters.items() if k not in ("self", "kwargs")}


def _kind(value: Any) -> str | None:
    """The JSON kind of a value (a default's, or an option's); None where any value goes."""
    import inspect

    if value is None or value is inspect.Parameter.empty:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return None


def _variant(cls: Any, base: Any) -> Any:
    """A pipeline of class `cls` over the loaded pipeline's own modules, unchanged.

    Not `cls.from_pipe(base)`: without a dtype it casts every shared module to float32 in place
    (diffusers 0.42 `pipelines/pipeline_utils.py`, `new_pipeline.to(dtype=dtype)` with float32 as
    the default), so one image-to-video request would turn a bf16 model into an fp32 one for
    every mode, and cast the modules it keeps in float32 along with the rest. Here the modules
    are passed as they are, with the configuration values the class takes (`boundary_ratio`,
    `expand_timesteps`).
    """
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {name: module for name, module in base.components.items() if name in parameters}
    for key, value in base.config.items():
        if key in parameters and key not in kwargs and not key.startswith("_"):
            kwargs[key] = value
    missing = [
        name
        for name, p in parameters.items()
        if name != "self" and p.default is inspect.Parameter.empty and name not in kwargs
    ]
    if missing:
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f"{cls.__name__} cannot be built from a {type(base).__name__} checkpoint: it has no "
            f"{', '.join(missing)}",
        )
    return cls(**kwargs)


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


def _fit_audio(audio: NDArray[np.float32], samples: int) -> NDArray[np.float32]:
    """(channels, n) audio cut or padded with silence to exactly `samples` (at most stereo)."""
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    audio = audio[:2, :samples]
    if audio.shape[1] < samples:
        audio = np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))
    return np.ascontiguousarray(audio, dtype=np.float32)


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


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return getattr(torch, name)


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU (or MPS) allocator's plain RuntimeError saying so."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
