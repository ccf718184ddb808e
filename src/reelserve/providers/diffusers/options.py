"""The typed `options` of a local model entry (`provider = "diffusers"`), parsed with pydantic:
every option with its type, bounds and meaning, and the pipeline arguments no entry may set.
Pure Python (no torch, no diffusers). What the options mean against a checkpoint is checked in
`catalog.py`; what only diffusers can judge, in `checks.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from reelserve.domain.models import ModelEntry

Family = Literal["wan", "ltx", "ltx2"]
Mode = Literal["t2v", "i2v", "flf2v"]

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
