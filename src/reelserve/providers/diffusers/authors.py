"""How each checkpoint's authors run it, and each family's defaults: tables, with sources.

`AUTHORS` is keyed by which checkpoint it is (`checkpoint.Geometry.variant`, read from its JSON
configs): steps, guidance, the scheduler's shift per resolution, Wan's default negative prompt,
components kept in float32, call arguments such as LTX-2.0's, and modes its authors did not
train. Every one of them can be overridden in the model entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reelserve.providers.diffusers.options import DType

FAMILY_NAMES: dict[str, str] = {"wan": "Wan 2.x", "ltx": "LTX-Video", "ltx2": "LTX-2"}

# Per family: pixel budget of derived sizes, longest clip in frames, default denoising steps.
DEFAULT_MAX_PIXELS: dict[str, int] = {"wan": 1280 * 720, "ltx": 768 * 512, "ltx2": 768 * 512}
DEFAULT_MAX_FRAMES: dict[str, int] = {"wan": 81, "ltx": 257, "ltx2": 257}
DEFAULT_STEPS: dict[str, int] = {"wan": 50, "ltx": 50, "ltx2": 40}
# Multiples the pipelines themselves insist on, whatever the VAE (LTX checks "divisible by 32").
MIN_MULTIPLE: dict[str, int] = {"wan": 16, "ltx": 32, "ltx2": 32}

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
