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
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reelserve.domain.models import RESOLUTION_SIZES, ModelEntry

log = logging.getLogger("reelserve.providers.diffusers")

Family = Literal["wan", "ltx", "ltx2"]
Mode = Literal["t2v", "i2v", "flf2v"]

FAMILY_NAMES: dict[str, str] = {"wan": "Wan 2.x", "ltx": "LTX-Video", "ltx2": "LTX-2"}

# Per family: pixel budget of derived sizes, longest clip in frames, default denoising steps.
DEFAULT_MAX_PIXELS: dict[str, int] = {"wan": 1280 * 720, "ltx": 768 * 512, "ltx2": 768 * 512}
DEFAULT_MAX_FRAMES: dict[str, int] = {"wan": 81, "ltx": 257, "ltx2": 257}
DEFAULT_STEPS: dict[str, int] = {"wan": 50, "ltx": 50, "ltx2": 40}
# Multiples the pipelines themselves insist on, whatever the VAE (LTX checks "divisible by 32").
MIN_MULTIPLE: dict[str, int] = {"wan": 16, "ltx": 32, "ltx2": 32}


class LocalModelError(ValueError):
    """A local model entry that cannot be served as declared (raised at startup)."""


class DiffusersOptions(BaseModel):
    """The `options` of a model entry with `provider = "diffusers"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family = Field(description="wan (Wan 2.1 / 2.2), ltx (LTX-Video 0.9.x) or ltx2")
    checkpoint: Path = Field(description="local diffusers checkpoint directory (model_index.json)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights and compute; auto: bfloat16 on GPUs, float32 on the CPU"
    )
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0)
    max_pixels: int | None = Field(None, ge=256, description="pixel budget of derived sizes")
    max_frames: int | None = Field(None, ge=1, description="longest clip the model renders")
    max_sequence_length: int | None = Field(None, ge=1, description="prompt tokens")
    negative_prompt: str | None = Field(None, description="used when a request sends none")
    attention_backend: str | None = Field(
        None, description="diffusers attention backend: flash, _flash_3, sage, _native_cudnn..."
    )
    compile: bool = Field(False, description="torch.compile the transformer's repeated blocks")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    batch_samples: bool = Field(
        False, description="text-to-video samples of one task in one batched call"
    )

    def steps(self) -> int:
        return self.num_inference_steps or DEFAULT_STEPS[self.family]


@dataclass(frozen=True)
class Geometry:
    """What a checkpoint needs of sizes and frame counts, and which modes it can do."""

    multiple: int  # width and height must be multiples of this
    temporal: int  # frame counts are k * temporal + 1
    modes: frozenset[str]
    description: str  # what kind of checkpoint it is, for error messages

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
        if index.get("expand_timesteps"):
            return Geometry(
                multiple, temporal, frozenset({"t2v", "i2v"}), "a Wan 2.2 TI2V checkpoint"
            )
        if in_channels == z_dim:
            return Geometry(
                multiple, temporal, frozenset({"t2v"}), "a Wan text-to-video checkpoint"
            )
        if transformer.get("pos_embed_seq_len"):
            return Geometry(multiple, temporal, frozenset({"flf2v"}), "a Wan FLF2V checkpoint")
        if transformer.get("image_dim"):
            return Geometry(multiple, temporal, frozenset({"i2v"}), "a Wan 2.1 I2V checkpoint")
        return Geometry(
            multiple, temporal, frozenset({"i2v", "flf2v"}), "a Wan 2.2 image-to-video checkpoint"
        )
    spatial = _ltx_ratio(vae, "spatial", "patch_size") * int(transformer.get("patch_size") or 1)
    temporal = _ltx_ratio(vae, "temporal", "patch_size_t") * int(
        transformer.get("patch_size_t") or 1
    )
    multiple = math.lcm(spatial, MIN_MULTIPLE[family])
    name = "an LTX-2 checkpoint" if family == "ltx2" else "an LTX-Video checkpoint"
    return Geometry(multiple, temporal, frozenset({"t2v", "i2v", "flf2v"}), name)


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
    return LocalModel(entry=entry, options=options, geometry=geometry)


def prepare_local_models(entries: list[ModelEntry]) -> dict[str, LocalModel]:
    """Validate every diffusers entry (see `prepare_local_model`), by model id."""
    return {entry.id: prepare_local_model(entry) for entry in entries}
