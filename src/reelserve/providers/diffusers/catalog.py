"""Local model entries, validated at startup: a `LocalModel` is an entry whose options, checkpoint
and capabilities agree, with the settings it runs with resolved (the entry's, else its authors').

Pure Python (no torch, no diffusers), so an API host without the `local` extra still validates its
model catalog at startup and shows the same capabilities as its GPU workers. Everything here is
checked once, when the server or worker starts: a model entry whose options are malformed, or
whose capabilities promise what its checkpoint cannot do (audio from a silent model, a duration
longer than it renders, a first+last frame mode its checkpoint lacks), stops startup with a
message naming the model, the option, what was expected and what was given. The size and
frame-count rules are `checkpoint.py`; the authors' settings `authors.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from reelserve.domain.models import ModelEntry
from reelserve.providers.diffusers.authors import (
    AUTHORS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_STEPS,
    FAMILY_NAMES,
    Authors,
)
from reelserve.providers.diffusers.checkpoint import (
    Geometry,
    checkpoint_components,
    checkpoint_geometry,
    default_geometry,
    derived_size,
)
from reelserve.providers.diffusers.options import (
    RESERVED_CALL_ARGUMENTS,
    DiffusersOptions,
    DistillLora,
    LocalModelError,
    parse_options,
)

log = logging.getLogger("reelserve.providers.diffusers.provider")


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
