"""Model entries and their capabilities: what each configured model id can be asked for.

A model entry is declared in settings (or taken from the embedded defaults) and names the provider
that runs it. Every request is checked against its model's capabilities at submit time, so a
request the model cannot serve is a 400 before anything is queued or paid for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["t2v", "i2v", "flf2v"]
Resolution = Literal["720p", "1080p", "4K"]
AspectRatio = Literal["16:9", "9:16"]

ALL_RESOLUTIONS: tuple[Resolution, ...] = ("720p", "1080p", "4K")
ALL_ASPECT_RATIOS: tuple[AspectRatio, ...] = ("16:9", "9:16")

# Landscape pixel sizes; 9:16 swaps width and height.
RESOLUTION_SIZES: dict[str, tuple[int, int]] = {
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "4K": (3840, 2160),
}


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) in pixels of a resolution at an aspect ratio."""
    width, height = RESOLUTION_SIZES[resolution]
    return (height, width) if aspect_ratio == "9:16" else (width, height)


def _all_modes() -> list[Mode]:
    return ["t2v", "i2v", "flf2v"]


def _all_resolutions() -> list[Resolution]:
    return list(ALL_RESOLUTIONS)


def _all_aspect_ratios() -> list[AspectRatio]:
    return list(ALL_ASPECT_RATIOS)


class ListPrice(BaseModel):
    """What one second of one generated video costs at one resolution (the ledger's list price:
    what a submit reserves, and what a test key or a provider that reports no cost is charged)."""

    model_config = ConfigDict(extra="forbid")

    video: float | None = Field(
        None, ge=0, description="per second without audio; default: video_audio"
    )
    video_audio: float = Field(ge=0, description="per second with audio")

    def per_second(self, audio: bool) -> float:
        return self.video_audio if audio or self.video is None else self.video


class ModelEntry(BaseModel):
    """One model id as clients see it, with the provider that runs it and what it can do."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str = Field(description="sandbox | google_veo | diffusers")
    description: str = ""
    modes: list[Mode] = Field(default_factory=_all_modes)
    durations: list[int] = Field(default_factory=lambda: [4, 6, 8])
    default_duration: int = 8
    resolutions: list[Resolution] = Field(default_factory=_all_resolutions)
    aspect_ratios: list[AspectRatio] = Field(default_factory=_all_aspect_ratios)
    # Resolutions allowed only at some durations, e.g. Veo 3.1's 1080p and 4K need 8 seconds.
    resolution_durations: dict[str, list[int]] = Field(default_factory=dict)
    audio: bool = True
    fps: int = 24
    # The pixel size (landscape width, height; 9:16 swaps them) a model renders a resolution at,
    # where it differs from the resolution's standard size (local models render smaller).
    sizes: dict[str, tuple[int, int]] = Field(default_factory=dict)
    max_sample_count: int = 4
    estimated_time: int = Field(60, description="expected seconds from start to finish")
    options: dict[str, Any] = Field(default_factory=dict, description="provider options")
    # The list price by resolution (core/pricing.py); none declared: a Veo model's comes from
    # `google.prices`, any other model's is 0.
    list_price: dict[Resolution, ListPrice] = Field(default_factory=dict)
    currency: str = Field("USD", min_length=1, max_length=8, description="of list_price")
    # What each configured upstream backend can do with this model (filled in by the provider,
    # e.g. Veo's Gemini API and Vertex AI rules); shown by `GET /v1/models`.
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # How the provider runs this model where clients should know (filled in by the provider,
    # e.g. a local model's experimental modes or distillation); shown by `GET /v1/models`.
    details: dict[str, Any] = Field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The entry as `GET /v1/models` shows it (no provider options, which may hold secrets)."""
        return {
            "id": self.id,
            "object": "model",
            "provider": self.provider,
            "description": self.description,
            "modes": list(self.modes),
            "durations": list(self.durations),
            "default_duration": self.default_duration,
            "resolutions": list(self.resolutions),
            "resolution_durations": {k: list(v) for k, v in self.resolution_durations.items()},
            "aspect_ratios": list(self.aspect_ratios),
            "audio": self.audio,
            "fps": self.fps,
            "sizes": {r: list(self.render_size(r)) for r in self.resolutions},
            "max_sample_count": self.max_sample_count,
            "estimated_time": self.estimated_time,
            **({"backends": self.backends} if self.backends else {}),
            **({"details": self.details} if self.details else {}),
        }

    def render_size(self, resolution: str, aspect_ratio: str = "16:9") -> tuple[int, int]:
        """(width, height) of the video this model renders for a resolution and aspect ratio."""
        width, height = self.sizes.get(resolution) or RESOLUTION_SIZES[resolution]
        return (height, width) if aspect_ratio == "9:16" else (width, height)


def default_models() -> list[ModelEntry]:
    """The embedded catalog: the seed's two Veo 3.1 models and the offline sandbox model."""
    veo_limits: dict[str, Any] = {
        "durations": [4, 6, 8],
        "resolutions": ["720p", "1080p", "4K"],
        "resolution_durations": {"1080p": [8], "4K": [8]},
        "audio": True,
        "fps": 24,
    }
    return [
        ModelEntry(
            id="veo3.1-fast-official",
            provider="google_veo",
            description="Google Veo 3.1 Fast",
            estimated_time=60,
            # Model ids on the Gemini API and on Vertex AI (docs/providers/google-veo.md).
            options={
                "upstream_model": "veo-3.1-fast-generate-preview",
                "vertex_model": "veo-3.1-fast-generate-001",
            },
            **veo_limits,
        ),
        ModelEntry(
            id="veo3.1-quality-official",
            provider="google_veo",
            description="Google Veo 3.1",
            estimated_time=120,
            options={
                "upstream_model": "veo-3.1-generate-preview",
                "vertex_model": "veo-3.1-generate-001",
            },
            **veo_limits,
        ),
        ModelEntry(
            id="sandbox",
            provider="sandbox",
            description="Procedural offline renderer: no GPU, no network, every parameter obeyed",
            durations=list(range(1, 21)),
            estimated_time=10,
        ),
    ]
