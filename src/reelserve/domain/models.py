"""Model entries and their capabilities: what each configured model id can be asked for.

A model entry is declared in settings (or taken from the embedded defaults) and names the provider
that runs it. Every request is checked against its model's capabilities at submit time, so a
request the model cannot serve is a 400 before anything is queued or paid for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# Providers of which one instance serves every model and route that names it without options
# of its own; a relay is one upstream, so each relay route is its own instance.
SHARED_PROVIDERS = ("sandbox", "google_veo", "diffusers")
RELAY = "relay"
TEST_KEYS_ROUTE = "sandbox"  # the route of every test key's task, whatever its model


class RouteEntry(BaseModel):
    """One way of serving a model (docs/routing.md): a provider and its options. A model's
    routes are tried in order at submit; a failure before anything was paid upstream moves a
    task on to the next; a task pending longer than `max_wait` may be taken by the next
    route's workers."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, description="sandbox | google_veo | diffusers | relay")
    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$",
        description="the route's name in task answers, metrics and usage; default: the "
        "provider's name, or <provider>:<model>[:<n>] for a route with options of its own",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the provider's options for this route (google_veo: credentials; relay: "
        "api, base_url, api_key, model); google_veo and diffusers routes add them to the "
        "model's own options",
    )
    weight: float | None = Field(
        None,
        gt=0,
        description="share of new tasks among the consecutive weighted routes that can serve "
        "a request; none: the route takes new tasks only when the routes before it cannot",
    )
    max_wait: float | None = Field(
        None,
        gt=0,
        description="seconds a task may wait pending on this route before the next route's "
        "workers may take it (overflow); none: never",
    )


@dataclass(frozen=True)
class Route:
    """A model's route as it runs: its name (what task rows carry and workers claim), the
    provider type, the options the provider gets, and its place in the model's order."""

    name: str
    provider: str
    model: str
    index: int
    options: dict[str, Any]
    weight: float | None = None
    max_wait: float | None = None
    # The options the route declares itself (a relay's: all of them). A shared provider
    # serves a route with some through a view of its own (google_veo: a subset of the
    # credentials); two routes of one name must declare the same.
    own_options: dict[str, Any] = field(default_factory=dict)


class ModelEntry(BaseModel):
    """One model id as clients see it, with the provider that runs it and what it can do."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str = Field(
        "",
        description="sandbox | google_veo | diffusers | relay; default: the first route's",
    )
    routes: list[RouteEntry] = Field(
        default_factory=list,
        description="the ways of serving this model, in order (docs/routing.md); none: one "
        "route, `provider` with `options`",
    )
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

    @model_validator(mode="after")
    def _provider_or_routes(self) -> ModelEntry:
        if not self.provider:
            if not self.routes:
                raise ValueError(
                    f"model {self.id!r}: expected a provider (sandbox, google_veo, diffusers, "
                    "relay) or a list of routes; got neither"
                )
            self.provider = self.routes[0].provider
        resolved = self.resolved_routes()
        for route in resolved:
            if route.name == TEST_KEYS_ROUTE and route.max_wait is not None:
                # Test keys' tasks of every model run on the route "sandbox": an overflow of
                # it would send them to a paid route.
                raise ValueError(
                    f"model {self.id!r}: the route named {TEST_KEYS_ROUTE!r} is where test "
                    "keys' tasks run, so it cannot overflow (max_wait); give the route "
                    "another name"
                )
        names = [route.name for route in resolved]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(
                    f"model {self.id!r}: two routes are named {name!r}; give each route of a "
                    "model its own name"
                )
        return self

    def resolved_routes(self) -> list[Route]:
        """The model's routes in order, with their names and the options each provider gets:
        the declared `routes`, or the one route `provider` with the model's `options`."""
        if not self.routes:
            own = self.provider not in SHARED_PROVIDERS
            name = f"{self.provider}:{self.id}" if own else self.provider
            declared = dict(self.options) if own else {}
            return [
                Route(name, self.provider, self.id, 0, dict(self.options), own_options=declared)
            ]
        out: list[Route] = []
        for index, route in enumerate(self.routes):
            own = bool(route.options) or route.provider not in SHARED_PROVIDERS
            if route.name is not None:
                name = route.name
            else:
                name = f"{route.provider}:{self.id}" if own else route.provider
                if own and index > 0:
                    name = f"{name}:{index + 1}"
            # A relay's options are its upstream's alone; a shared provider's add to the
            # model's (Veo's upstream model ids, a local model's checkpoint).
            options = (
                dict(route.options)
                if route.provider == RELAY
                else {**self.options, **route.options}
            )
            out.append(
                Route(
                    name,
                    route.provider,
                    self.id,
                    index,
                    options,
                    weight=route.weight,
                    max_wait=route.max_wait,
                    own_options=dict(route.options),
                )
            )
        return out

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
            **(
                {
                    "routes": [
                        {"name": r.name, "provider": r.provider} for r in self.resolved_routes()
                    ]
                }
                if self.routes
                else {}
            ),
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
