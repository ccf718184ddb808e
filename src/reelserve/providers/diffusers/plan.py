"""What one task asks of a local model, mapped onto what the model renders (pure): the size,
frame count and per-sample seeds (`plan_render`), the pipeline class of each family and mode,
and what one sample comes back as."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from reelserve.domain.spec import GenerationSpec
from reelserve.providers.diffusers.catalog import LocalModel

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
