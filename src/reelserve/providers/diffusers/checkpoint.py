"""A checkpoint's geometry, read from its JSON configs (no torch, no diffusers), and the rules
that map a request onto it:

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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelserve.domain.models import RESOLUTION_SIZES
from reelserve.providers.diffusers.authors import FAMILY_NAMES, MIN_MULTIPLE
from reelserve.providers.diffusers.options import LocalModelError


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
