"""Local model entries: their typed options, and the rules that map a request onto a model.

Pure Python (no torch, no diffusers), so an API host without the `local` extra still validates its
model catalog at startup and shows the same capabilities as its GPU workers. Everything here is
checked once, when the server or worker starts: a model entry whose options are malformed, or
whose capabilities promise what its checkpoint cannot do (audio from a silent model, a duration
longer than it renders, a first+last frame mode its checkpoint lacks), stops startup with a
message naming the model, the option, what was expected and what was given.

The mapping rules (what `GET /v1/models` shows and what a worker renders):

* size: each resolution maps to the entry's `sizes` (landscape width x height; 9:16 swaps them).
  Undeclared sizes are derived: the resolution's standard size scaled down, keeping its aspect
  ratio, to at most `max_pixels`, each side then rounded to the nearest multiple the checkpoint
  needs (its VAE's spatial compression times the transformer's patch size).
* frames: `duration * fps` rounded up to the next count the VAE can encode, `k * t + 1` for its
  temporal compression `t` (4 for Wan, 8 for LTX-Video and LTX-2), so a clip is never shorter than
  asked; at most `max_frames`.

And the settings each checkpoint's authors run it with (`AUTHORS`), read from which checkpoint
it is (`Geometry.variant`, from its JSON configs): steps, guidance, the scheduler's shift per
resolution, Wan's default negative prompt, components kept in float32, and call arguments such
as LTX-2.0's. Every one of them can be overridden in the model entry.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from reelserve.domain.models import RESOLUTION_SIZES, ModelEntry

log = logging.getLogger("reelserve.providers.diffusers.provider")

Family = Literal["wan", "ltx", "ltx2"]
Mode = Literal["t2v", "i2v", "flf2v"]

FAMILY_NAMES: dict[str, str] = {"wan": "Wan 2.x", "ltx": "LTX-Video", "ltx2": "LTX-2"}

# Per family: pixel budget of derived sizes, longest clip in frames, default denoising steps.
DEFAULT_MAX_PIXELS: dict[str, int] = {"wan": 1280 * 720, "ltx": 768 * 512, "ltx2": 768 * 512}
DEFAULT_MAX_FRAMES: dict[str, int] = {"wan": 81, "ltx": 257, "ltx2": 257}
DEFAULT_STEPS: dict[str, int] = {"wan": 50, "ltx": 50, "ltx2": 40}
# Multiples the pipelines themselves insist on, whatever the VAE (LTX checks "divisible by 32").
MIN_MULTIPLE: dict[str, int] = {"wan": 16, "ltx": 32, "ltx2": 32}


DType = Literal["bfloat16", "float16", "float32"]
# A value of `pipeline_kwargs`: what a TOML or JSON model entry can hold.
CallValue = StrictBool | StrictInt | StrictFloat | str | list[StrictInt] | list[StrictFloat] | None

# The pipeline arguments reelserve itself sets from the request and the options above: refused
# in `pipeline_kwargs` (each has its own option, or comes from the request).
RESERVED_CALL_ARGUMENTS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "height",
        "width",
        "num_frames",
        "frame_rate",
        "num_inference_steps",
        "guidance_scale",
        "guidance_scale_2",
        "num_videos_per_prompt",
        "generator",
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "output_type",
        "return_dict",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
        "max_sequence_length",
        "image",
        "last_image",
        "conditions",
        "video",
        "frame_index",
    }
)

# Wan's default negative prompt (`sample_neg_prompt` in the Wan 2.1 / 2.2 repositories'
# `wan/configs/shared_config.py`), which the official scripts use when none is given.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"  # noqa: RUF001
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"  # noqa: RUF001
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"  # noqa: RUF001
)


@dataclass(frozen=True)
class Authors:
    """How a checkpoint's authors run it (see `AUTHORS`); None: the pipeline's own default."""

    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    negative_prompt: str | None = None
    # The scheduler's flow shift below and from 720p (short side >= 720) up.
    shift_480p: float | None = None
    shift_720p: float | None = None
    component_dtypes: tuple[tuple[str, DType], ...] = ()
    call: tuple[tuple[str, Any], ...] = ()
    experimental_modes: tuple[str, ...] = ()


# The official code runs Wan's VAE (and 2.1's CLIP image encoder) in float32.
_WAN_FP32: tuple[tuple[str, DType], ...] = (("vae", "float32"), ("image_encoder", "float32"))
_WAN21 = Authors(
    negative_prompt=WAN_NEGATIVE_PROMPT,
    shift_480p=3.0,  # diffusers' Wan example: "5.0 for 720P, 3.0 for 480P"
    shift_720p=5.0,
    component_dtypes=_WAN_FP32,
)
# By checkpoint (`Geometry.variant`). Sources: the Wan 2.1 / 2.2 repositories (`wan/configs/`:
# sample_shift, sample_steps, sample_guide_scale as (low-noise, high-noise) pairs for A14B),
# diffusers' documentation of the LTX pipelines (LTX-Video >= 0.9.1's decode timestep and image
# condition noise) and of LTX-2 (`use_cross_timestep=False` and STG block 29 for LTX-2.0; the
# pipeline's defaults are LTX-2.3's).
AUTHORS: dict[str, Authors] = {
    "wan2.1-t2v": _WAN21,
    "wan2.1-i2v": _WAN21,
    "wan2.1-flf2v": _WAN21,
    "wan2.2-t2v-a14b": Authors(
        steps=40,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        negative_prompt=WAN_NEGATIVE_PROMPT,
        shift_480p=12.0,
        shift_720p=12.0,
        component_dtypes=_WAN_FP32,
    ),
    "wan2.2-i2v-a14b": Authors(
        steps=40,
        guidance_scale=3.5,
        guidance_scale_2=3.5,
        negative_prompt=WAN_NEGATIVE_PROMPT,
        shift_480p=5.0,
        shift_720p=5.0,
        component_dtypes=_WAN_FP32,
        # Wan 2.2 I2V-A14B was trained on first frames only; its last_image path is FLF2V's.
        experimental_modes=("flf2v",),
    ),
    "wan2.2-ti2v-5b": Authors(
        negative_prompt=WAN_NEGATIVE_PROMPT,
        shift_480p=5.0,
        shift_720p=5.0,
        component_dtypes=_WAN_FP32,
    ),
    "ltx-0.9.0": Authors(),
    "ltx-0.9.1": Authors(call=(("decode_timestep", 0.05), ("image_cond_noise_scale", 0.025))),
    "ltx2.0": Authors(
        call=(("use_cross_timestep", False), ("spatio_temporal_guidance_blocks", [29]))
    ),
    "ltx2.3": Authors(),
}


class LocalModelError(ValueError):
    """A local model entry that cannot be served as declared (raised at startup)."""


class DistillLora(BaseModel):
    """A step- and CFG-distilled LoRA (e.g. lightx2v's 4-step LoRAs for Wan 2.1 / 2.2), fused
    into the transformer at load: the model then renders in `steps` steps without guidance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="local .safetensors file of the LoRA (transformer)")
    path_2: Path | None = Field(
        None, description="Wan 2.2 A14B: the low-noise expert's LoRA (transformer_2)"
    )
    scale: float = Field(1.0, gt=0, description="LoRA scale when fusing")
    steps: int = Field(4, ge=1, le=100, description="denoising steps it was distilled for")
    guidance_scale: float = Field(1.0, ge=0, description="1: no classifier-free guidance")


class FirstBlockCache(BaseModel):
    """Skip the other blocks while the first block's output changes less than `threshold`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["first_block"]
    threshold: float = Field(0.05, gt=0, description="relative change; higher skips more")


class MagCache(BaseModel):
    """Skip steps by the model's calibrated magnitude ratios (MagCache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mag"]
    threshold: float = Field(0.06, gt=0, description="accumulated error before recomputing")
    max_skip_steps: int = Field(3, ge=1)
    retention_ratio: float = Field(0.2, ge=0, le=1, description="share of early steps kept")
    mag_ratios: list[float] = Field(
        min_length=2, description="the checkpoint's calibrated ratios (diffusers calibrate=True)"
    )


# Every attention module of the Wan and LTX transformers' blocks (blocks.3.attn1,
# transformer_blocks.0.attn2, audio_attn1...). diffusers' own default ("^blocks.*attn", matched
# whole) names none of them: attn1 and attn2 end in a digit, so nothing would be cached.
TAYLORSEER_ATTENTION = (r"(blocks|transformer_blocks)\.\d+\.[a-z_0-9]*attn[a-z_0-9]*",)


class TaylorSeerCache(BaseModel):
    """Compute every `cache_interval` steps and predict the ones between (TaylorSeer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["taylorseer"]
    cache_interval: int = Field(5, ge=1)
    disable_cache_before_step: int = Field(3, ge=0)
    disable_cache_after_step: int | None = Field(None, ge=0)
    max_order: int = Field(1, ge=0, le=4)
    cache_identifiers: list[str] = Field(
        default_factory=lambda: list(TAYLORSEER_ATTENTION),
        description="regular expressions (fullmatch) of the module names to predict",
    )


CacheOption = FirstBlockCache | MagCache | TaylorSeerCache


class DiffusersOptions(BaseModel):
    """The `options` of a model entry with `provider = "diffusers"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family = Field(description="wan (Wan 2.1 / 2.2), ltx (LTX-Video 0.9.x) or ltx2")
    checkpoint: Path = Field(description="local diffusers checkpoint directory (model_index.json)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights and compute; auto: bfloat16 on GPUs, float32 on the CPU"
    )
    component_dtypes: dict[str, DType] = Field(
        default_factory=dict,
        description="dtype per component (vae, image_encoder, text_encoder...); Wan's VAE and "
        "image encoder default to float32",
    )
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0)
    guidance_scale_2: float | None = Field(
        None, ge=0, description="Wan 2.2 A14B: guidance of the low-noise expert (transformer_2)"
    )
    flow_shift: float | dict[str, float] | None = Field(
        None, description="Wan: the scheduler's shift, one for all resolutions or per resolution"
    )
    pipeline_kwargs: dict[str, CallValue] = Field(
        default_factory=dict, description="more arguments of the pipelines' __call__"
    )
    experimental_modes: list[Mode] = Field(
        default_factory=list, description="modes GET /v1/models marks experimental"
    )
    max_pixels: int | None = Field(None, ge=256, description="pixel budget of derived sizes")
    max_frames: int | None = Field(None, ge=1, description="longest clip the model renders")
    max_sequence_length: int | None = Field(None, ge=1, description="prompt tokens")
    negative_prompt: str | None = Field(None, description="used when a request sends none")
    attention_backend: str | None = Field(
        None, description="diffusers attention backend: flash, _flash_3, sage, _native_cudnn..."
    )
    compile: bool = Field(False, description="torch.compile the transformer's repeated blocks")
    compile_warmup: bool = Field(
        True, description="with compile: compile at load with one short render, timed"
    )
    distill_lora: DistillLora | None = Field(None, description="a step-distilled LoRA, fused")
    cache: CacheOption | None = Field(
        None, discriminator="kind", description="a diffusers cache hook on the transformer"
    )
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    batch_samples: bool = Field(
        False, description="text-to-video samples of one task in one batched call"
    )


@dataclass(frozen=True)
class Geometry:
    """What a checkpoint needs of sizes and frame counts, and which modes it can do."""

    multiple: int  # width and height must be multiples of this
    temporal: int  # frame counts are k * temporal + 1
    modes: frozenset[str]
    description: str  # what kind of checkpoint it is, for error messages
    variant: str = ""  # a key of AUTHORS; "" where the checkpoint is not on this host

    def frames(self, duration: int, fps: int) -> int:
        return frame_count(duration, fps, self.temporal)


@dataclass(frozen=True)
class LocalModel:
    """A validated local model: its entry (with `sizes` filled in) and its options."""

    entry: ModelEntry
    options: DiffusersOptions
    geometry: Geometry

    def frames(self, duration: int) -> int:
        return self.geometry.frames(duration, self.entry.fps)

    @property
    def authors(self) -> Authors:
        return AUTHORS.get(self.geometry.variant, Authors())

    def steps(self) -> int:
        distill = self.options.distill_lora
        return (
            self.options.num_inference_steps
            or (distill.steps if distill else None)
            or self.authors.steps
            or DEFAULT_STEPS[self.options.family]
        )

    def guidance(self) -> tuple[float | None, float | None]:
        """(guidance_scale, guidance_scale_2): the entry's, else the authors'; None: the
        pipeline's own. guidance_scale_2 is only ever set on a two-expert Wan 2.2 checkpoint."""
        distill = self.options.distill_lora
        if distill is not None:  # distilled without guidance: the same for both experts
            return distill.guidance_scale, distill.guidance_scale
        first = self.options.guidance_scale
        if first is None:
            first = self.authors.guidance_scale
        second = self.options.guidance_scale_2
        if second is None:
            second = self.authors.guidance_scale_2
        return first, second

    def negative_prompt(self, asked: str | None) -> str | None:
        return asked or self.options.negative_prompt or self.authors.negative_prompt

    def flow_shift(self, resolution: str, width: int, height: int) -> float | None:
        """The scheduler shift a render at this size uses; None: the checkpoint's scheduler."""
        shift = self.options.flow_shift
        if isinstance(shift, dict):
            shift = shift.get(resolution)
        if shift is not None:
            return float(shift)
        big = min(width, height) >= 720
        return self.authors.shift_720p if big else self.authors.shift_480p

    def component_dtypes(self) -> dict[str, str]:
        return {**dict(self.authors.component_dtypes), **self.options.component_dtypes}

    def call_arguments(self) -> dict[str, Any]:
        """Extra pipeline arguments: the authors', then the entry's `pipeline_kwargs`."""
        return {**dict(self.authors.call), **self.options.pipeline_kwargs}

    def experimental_modes(self) -> list[str]:
        marked = set(self.options.experimental_modes) | set(self.authors.experimental_modes)
        return [m for m in self.entry.modes if m in marked]


# -- the mapping rules ---------------------------------------------------------------------------


def frame_count(duration: int, fps: int, temporal: int) -> int:
    """The smallest frame count >= duration * fps of the form k * temporal + 1 (k >= 0)."""
    if duration < 1 or fps < 1 or temporal < 1:
        raise ValueError("duration, fps and temporal must be positive")
    wanted = duration * fps
    return math.ceil((wanted - 1) / temporal) * temporal + 1


def derived_size(resolution: str, max_pixels: int, multiple: int) -> tuple[int, int]:
    """The landscape size a resolution maps to under a pixel budget (see the module docstring)."""
    width, height = RESOLUTION_SIZES[resolution]
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))

    def side(pixels: int) -> int:
        return max(multiple, round(pixels * scale / multiple) * multiple)

    return side(width), side(height)


# -- reading a checkpoint's configs (JSON only) --------------------------------------------------


def _config(directory: Path, name: str) -> dict[str, Any]:
    path = directory / name / "config.json" if name else directory / "model_index.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _ltx_ratio(vae: dict[str, Any], key: str, patch_key: str) -> int:
    explicit = vae.get(f"{key}_compression_ratio")
    if isinstance(explicit, int):
        return explicit
    scaling = vae.get("spatio_temporal_scaling", (True, True, True, False))
    blocks = vae.get("block_out_channels") or (0, 0, 0, 0)
    if isinstance(scaling, bool):
        count = len(blocks) if scaling else 0
    else:
        count = sum(bool(s) for s in scaling)
    patch = int(vae.get(patch_key, 4 if key == "spatial" else 1))
    return int(patch * 2**count)


def checkpoint_geometry(family: str, checkpoint: Path) -> Geometry | None:
    """The checkpoint's geometry and modes from its JSON configs; None if it is not on this host."""
    if not (checkpoint / "model_index.json").is_file():
        return None
    index = _config(checkpoint, "")
    vae = _config(checkpoint, "vae")
    transformer = _config(checkpoint, "transformer") or _config(checkpoint, "transformer_2")
    cls = str(index.get("_class_name", ""))
    expected = {"wan": "Wan", "ltx": "LTX", "ltx2": "LTX2"}[family]
    if not cls.startswith(expected) or (family == "ltx" and cls.startswith("LTX2")):
        raise LocalModelError(
            f"{checkpoint} holds a {cls or 'unknown'} checkpoint, not a {FAMILY_NAMES[family]} one"
        )
    if family == "wan":
        patch = transformer.get("patch_size") or [1, 2, 2]
        spatial = int(vae.get("scale_factor_spatial") or 8)
        multiple = spatial * int(patch[1])
        temporal = int(vae.get("scale_factor_temporal") or 4)
        z_dim = int(vae.get("z_dim") or 16)
        in_channels = int(transformer.get("in_channels") or z_dim)
        experts = _has_component(index, "transformer_2")
        if index.get("expand_timesteps"):
            return Geometry(
                multiple,
                temporal,
                frozenset({"t2v", "i2v"}),
                "a Wan 2.2 TI2V checkpoint",
                "wan2.2-ti2v-5b",
            )
        if in_channels == z_dim:
            variant = "wan2.2-t2v-a14b" if experts else "wan2.1-t2v"
            return Geometry(
                multiple, temporal, frozenset({"t2v"}), "a Wan text-to-video checkpoint", variant
            )
        if transformer.get("pos_embed_seq_len"):
            return Geometry(
                multiple, temporal, frozenset({"flf2v"}), "a Wan FLF2V checkpoint", "wan2.1-flf2v"
            )
        if transformer.get("image_dim"):
            return Geometry(
                multiple, temporal, frozenset({"i2v"}), "a Wan 2.1 I2V checkpoint", "wan2.1-i2v"
            )
        return Geometry(
            multiple,
            temporal,
            frozenset({"i2v", "flf2v"}),
            "a Wan 2.2 image-to-video checkpoint",
            "wan2.2-i2v-a14b",
        )
    spatial = _ltx_ratio(vae, "spatial", "patch_size") * int(transformer.get("patch_size") or 1)
    temporal = _ltx_ratio(vae, "temporal", "patch_size_t") * int(
        transformer.get("patch_size_t") or 1
    )
    multiple = math.lcm(spatial, MIN_MULTIPLE[family])
    if family == "ltx2":
        # LTX-2.3 modulates cross-attention by the prompt; LTX-2.0 does not.
        newer = transformer.get("cross_attn_mod") or transformer.get("audio_cross_attn_mod")
        name, variant = "an LTX-2 checkpoint", "ltx2.3" if newer else "ltx2.0"
    else:
        # From 0.9.1 on, LTX-Video's VAE decoder is timestep-conditioned.
        newer = vae.get("timestep_conditioning")
        name, variant = "an LTX-Video checkpoint", "ltx-0.9.1" if newer else "ltx-0.9.0"
    return Geometry(multiple, temporal, frozenset({"t2v", "i2v", "flf2v"}), name, variant)


def _has_component(index: dict[str, Any], name: str) -> bool:
    value = index.get(name)
    return isinstance(value, list) and any(v is not None for v in value)


def checkpoint_components(checkpoint: Path) -> set[str] | None:
    """The component names of a checkpoint (model_index.json); None if it is not on this host."""
    index = _config(checkpoint, "")
    if not index:
        return None
    return {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}


def default_geometry(family: str) -> Geometry:
    """The published checkpoints' geometry, for hosts that do not hold the checkpoint."""
    temporal = 4 if family == "wan" else 8
    return Geometry(
        MIN_MULTIPLE[family],
        temporal,
        frozenset({"t2v", "i2v", "flf2v"}),
        f"a {FAMILY_NAMES[family]} checkpoint",
    )


# -- startup validation --------------------------------------------------------------------------


def parse_options(entry: ModelEntry) -> DiffusersOptions:
    try:
        return DiffusersOptions.model_validate(entry.options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "options"
            given = error.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            problems.append(f"options.{where}: {error['msg']}{shown}")
        raise LocalModelError(f'model "{entry.id}": ' + "; ".join(problems)) from None


def prepare_local_model(entry: ModelEntry) -> LocalModel:
    """Validate a diffusers model entry and fill in the sizes it renders each resolution at.

    Raises `LocalModelError` naming the model and what to change.
    """
    options = parse_options(entry)
    family = options.family
    where = f'model "{entry.id}"'
    try:
        geometry = checkpoint_geometry(family, options.checkpoint)
    except LocalModelError as exc:
        raise LocalModelError(f"{where}: {exc}") from None
    if geometry is None:
        log.warning(
            "%s: checkpoint %s is not on this host; assuming the published %s geometry",
            where,
            options.checkpoint,
            FAMILY_NAMES[family],
        )
        geometry = default_geometry(family)

    if entry.audio and family != "ltx2":
        raise LocalModelError(
            f"{where}: {FAMILY_NAMES[family]} models generate no audio; set audio = false"
        )
    unsupported = [m for m in entry.modes if m not in geometry.modes]
    if unsupported:
        raise LocalModelError(
            f"{where}: {options.checkpoint} is {geometry.description}, which cannot do "
            f"{', '.join(unsupported)}; set modes to a subset of "
            f"{sorted(geometry.modes)} (got {list(entry.modes)})"
        )

    max_frames = options.max_frames or DEFAULT_MAX_FRAMES[family]
    too_long = [d for d in entry.durations if geometry.frames(d, entry.fps) > max_frames]
    if too_long:
        longest = max(
            (d for d in range(1, 61) if geometry.frames(d, entry.fps) <= max_frames), default=0
        )
        raise LocalModelError(
            f"{where}: durations {too_long} need more than max_frames = {max_frames} frames at "
            f"{entry.fps} fps; this model allows durations up to {longest} seconds "
            f"(got durations {list(entry.durations)})"
        )

    sizes: dict[str, tuple[int, int]] = {}
    budget = options.max_pixels or DEFAULT_MAX_PIXELS[family]
    for resolution in map(str, entry.resolutions):
        declared = entry.sizes.get(resolution)
        if declared is None:
            sizes[resolution] = derived_size(resolution, budget, geometry.multiple)
            continue
        width, height = declared
        if width < 1 or height < 1 or width % geometry.multiple or height % geometry.multiple:
            raise LocalModelError(
                f"{where}: sizes.{resolution} must be positive multiples of {geometry.multiple} "
                f"for {geometry.description} (got {width}x{height})"
            )
        sizes[resolution] = (width, height)
    for resolution in entry.sizes:
        if resolution not in entry.resolutions:
            raise LocalModelError(
                f"{where}: sizes names resolution {resolution!r}, which is not among the "
                f"entry's resolutions {list(entry.resolutions)}"
            )
    entry.sizes = sizes
    _check_tuning(where, entry, options, geometry)
    model = LocalModel(entry=entry, options=options, geometry=geometry)
    entry.details = model_details(model)
    return model


def model_details(model: LocalModel) -> dict[str, Any]:
    """What `GET /v1/models` says of how a local model runs (its entry's `details`)."""
    details: dict[str, Any] = {}
    experimental = model.experimental_modes()
    if experimental:
        details["experimental_modes"] = experimental
    distill = model.options.distill_lora
    if distill is not None:
        details["distilled"] = {"steps": model.steps(), "guidance_scale": distill.guidance_scale}
    return details


def _check_tuning(
    where: str, entry: ModelEntry, options: DiffusersOptions, geometry: Geometry
) -> None:
    """The options that tune how the pipeline runs, against what the checkpoint is."""
    family = options.family
    two_experts = ("", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b")
    if options.guidance_scale_2 is not None and (
        family != "wan" or geometry.variant not in two_experts
    ):
        raise LocalModelError(
            f"{where}: options.guidance_scale_2 is the low-noise expert's guidance of a Wan "
            f"2.2 A14B checkpoint (two transformers); {options.checkpoint} is "
            f"{geometry.description} (got guidance_scale_2 = {options.guidance_scale_2})"
        )
    shift = options.flow_shift
    if shift is not None:
        if family != "wan":
            raise LocalModelError(
                f"{where}: options.flow_shift applies to wan models only (the LTX schedulers "
                f"shift by resolution themselves); got flow_shift = {shift!r}"
            )
        shifts = shift if isinstance(shift, dict) else {"*": shift}
        unknown = [r for r in shifts if r != "*" and r not in entry.resolutions]
        if unknown:
            raise LocalModelError(
                f"{where}: options.flow_shift names resolutions {unknown}; expected a number or "
                f"a table by the entry's resolutions {list(entry.resolutions)}"
            )
        bad = {r: v for r, v in shifts.items() if not v > 0}
        if bad:
            raise LocalModelError(f"{where}: options.flow_shift must be positive (got {shift!r})")
    components = checkpoint_components(options.checkpoint)
    if components is not None:
        unknown = sorted(set(options.component_dtypes) - components)
        if unknown:
            raise LocalModelError(
                f"{where}: options.component_dtypes names {unknown}, which {options.checkpoint} "
                f"does not have; its components are {sorted(components)}"
            )
    reserved = sorted(set(options.pipeline_kwargs) & RESERVED_CALL_ARGUMENTS)
    if reserved:
        raise LocalModelError(
            f"{where}: options.pipeline_kwargs cannot set {reserved}: reelserve sets them from "
            "the request or from their own options (num_inference_steps, guidance_scale, "
            "guidance_scale_2, negative_prompt, max_sequence_length)"
        )
    distill = options.distill_lora
    if distill is not None:
        _check_distill(where, options, distill, geometry, two_experts)
    extra = [m for m in options.experimental_modes if m not in entry.modes]
    if extra:
        raise LocalModelError(
            f"{where}: options.experimental_modes must be among the entry's modes "
            f"{list(entry.modes)} (got {list(options.experimental_modes)})"
        )


def prepare_local_models(entries: list[ModelEntry]) -> dict[str, LocalModel]:
    """Validate every diffusers entry (see `prepare_local_model`), by model id."""
    return {entry.id: prepare_local_model(entry) for entry in entries}


def _check_distill(
    where: str,
    options: DiffusersOptions,
    distill: DistillLora,
    geometry: Geometry,
    two_experts: tuple[str, ...],
) -> None:
    if options.guidance_scale is not None or options.guidance_scale_2 is not None:
        raise LocalModelError(
            f"{where}: options.guidance_scale and guidance_scale_2 do not apply with "
            "distill_lora (a distilled model runs at distill_lora.guidance_scale, 1 by default); "
            "set distill_lora.guidance_scale instead"
        )
    if distill.path_2 is not None and geometry.variant not in two_experts:
        raise LocalModelError(
            f"{where}: options.distill_lora.path_2 is the low-noise expert's LoRA of a Wan 2.2 "
            f"A14B checkpoint; {options.checkpoint} is {geometry.description}"
        )
    on_host = geometry.variant != ""  # the checkpoint, and so its LoRAs, are on this host
    for name, path in (("path", distill.path), ("path_2", distill.path_2)):
        if path is None:
            continue
        if path.suffix != ".safetensors":
            raise LocalModelError(
                f"{where}: options.distill_lora.{name} must be a local .safetensors file "
                f"(got {str(path)!r})"
            )
        if on_host and not path.is_file():
            raise LocalModelError(
                f"{where}: options.distill_lora.{name}: no file {path} on this host"
            )
