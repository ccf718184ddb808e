"""The sandbox's frames: the procedural scene for text-to-video; for image-to-video, the given
first frame exactly, slowly zooming while the scene fades in, and with a last frame a crossfade
that ends exactly on it."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from reelserve.domain.spec import GenerationSpec
from reelserve.providers.base import Frame, InputImages
from reelserve.providers.sandbox.palette import stable_rng
from reelserve.providers.sandbox.scene import Scene


def _fit(image: Frame, width: int, height: int) -> Image.Image:
    """An input image as a width x height RGB Pillow image.

    The worker already fits images to the output size; this only guards against a caller that did
    not, by stretching, so a mismatch cannot crash the encoder.
    """
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.LANCZOS)
    return pil


def _smoothstep(t: float) -> float:
    t = min(1.0, max(0.0, t))
    return t * t * (3 - 2 * t)


def _frozen(image: Image.Image) -> Frame:
    """The pixels of `image` as a read-only uint8 array (no copy beyond Pillow's packing)."""
    return np.asarray(image, dtype=np.uint8)


def _zoom(image: Image.Image, zoom: float, centre: tuple[float, float]) -> Image.Image:
    """`image` magnified by `zoom` around `centre` (fractions of the size), at the same size."""
    if zoom <= 1.0:
        return image
    w, h = image.size
    cw, ch = w / zoom, h / zoom
    x0 = min(max(centre[0] * w - cw / 2, 0.0), w - cw)
    y0 = min(max(centre[1] * h - ch / 2, 0.0), h - ch)
    return image.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))


def render_frames(
    spec: GenerationSpec, sample_index: int, images: InputImages | None = None
) -> Iterator[Frame]:
    """Yield the `spec.frame_count` RGB frames of sample `sample_index` (read-only arrays).

    Text-to-video: the procedural scene. With `images.first`: frame 0 is exactly that image, which
    then slowly zooms and pans while the scene fades in over it. With `images.last` as well: a
    crossfade from the first to the last image with a gentle zoom and a faint scene overlay that
    both vanish at the ends, so the last frame is exactly the last image.
    """
    images = images or InputImages()
    seed = spec.sample_seed(sample_index)
    scene = Scene(spec, seed)
    count = spec.frame_count
    width, height = spec.width, spec.height
    if images.first is None:
        for index in range(count):
            yield _frozen(scene.procedural(index))
        return

    first = _fit(images.first, width, height)
    last = _fit(images.last, width, height) if images.last is not None else None
    drift = stable_rng("drift", seed)
    target = (float(drift.uniform(0.35, 0.65)), float(drift.uniform(0.35, 0.65)))
    span = max(1, count - 1)
    for index in range(count):
        t = index / span
        if index == 0:
            yield _frozen(first)
            continue
        if last is not None and index == count - 1:
            yield _frozen(last)
            continue
        if last is None:
            # Ease in from rest so the motion starts smoothly on the exact first frame.
            ease = _smoothstep(t)
            centre = (0.5 + (target[0] - 0.5) * ease, 0.5 + (target[1] - 0.5) * ease)
            frame = _zoom(first, 1.0 + 0.12 * ease, centre)
            strength = 0.65 * ease
        else:
            bump = math.sin(math.pi * t)  # 0 at both ends
            frame = Image.blend(first, last, _smoothstep(t))
            frame = _zoom(frame, 1.0 + 0.06 * bump, target)
            strength = 0.55 * bump * bump
        if strength > 0.004:
            frame = Image.blend(frame, scene.background(index), 0.35 * strength)
            scene.overlay(frame, index, strength)
        yield _frozen(frame)
