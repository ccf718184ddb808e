"""Pillow drawing for the sandbox's frames: the caption font and its word wrap, anti-aliased
shape masks, their soft shadows and shading, and masks at a given opacity. Everything is drawn
once per clip and pasted per frame (in C), so nothing loops over pixels in Python."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def scaled_mask(mask: Image.Image, strength: float) -> Image.Image:
    """`mask` with its alpha multiplied by `strength` (a 256-entry lookup table, in C)."""
    if strength >= 1.0:
        return mask
    lut = [round(v * strength) for v in range(256)]
    return mask.point(lut)


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at `size` pixels (a bitmap font if FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def _longest(count: int, fits: Callable[[int], bool]) -> int:
    """The largest `k` in [0, count] for which `fits(k)` holds, taking `fits(0)` as given.

    A galloping search, then a binary one: O(log k) calls, where trying every `k` in turn costs
    O(k) calls (and measuring a prefix of length `k` is itself O(k): that made the caption wrap
    cubic in the length of a word without spaces). Text widths may dip by a kerning pair as
    text grows, so the answer is a `k` that was tested to fit near the largest one, never one
    that does not fit.
    """
    good, step = 0, 1
    bad = count + 1  # the smallest k known not to fit, or one past the end
    while good < count:
        probe = min(count, good + step)
        if not fits(probe):
            bad = probe
            break
        good, step = probe, step * 2
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def _fitting(
    text: str, start: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> int:
    """How many characters of `text` from `start` fit in `width` pixels (see `_longest`)."""
    return _longest(len(text) - start, lambda k: font.getlength(text[start : start + k]) <= width)


def wrap(
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
    *,
    max_lines: int,
) -> list[str]:
    """Greedy word wrap to `width` pixels, at most `max_lines` lines, '...' if cut short.

    Words are joined by single spaces; a word wider than the box is cut by characters. Each
    line is found with O(log n) measurements (`_longest`) and wrapping stops at the first line
    past `max_lines`, so the cost is near-linear in what is shown, whatever the prompt (8,000
    characters without a space included).
    """
    flat = " ".join(text.split())
    lines: list[str] = []
    start = 0
    while start < len(flat) and len(lines) <= max_lines:
        end = start + max(1, _fitting(flat, start, font, width))  # one character at least
        if end < len(flat) and flat[end] != " ":
            space = flat.rfind(" ", start, end)
            if space > start:
                end = space  # break before the word that does not fit
        lines.append(flat[start:end])
        start = end + 1 if end < len(flat) and flat[end] == " " else end
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        keep = _longest(len(last), lambda k: font.getlength(last[:k] + "...") <= width)
        lines[-1] = last[:keep].rstrip() + "..."
    return lines or [""]


def shape_mask(kind: str, size: int, angle: float) -> Image.Image:
    """An anti-aliased alpha mask of a shape: drawn 4x larger, then box-filtered down."""
    scale = 4
    big = size * scale
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    inset = big * 0.04
    box = (inset, inset, big - inset, big - inset)
    centre = big / 2
    radius = big / 2 - inset

    def polygon(points: int, inner: float | None = None) -> list[tuple[float, float]]:
        out = []
        steps = points * (2 if inner is not None else 1)
        for k in range(steps):
            r = radius if inner is None or k % 2 == 0 else radius * inner
            theta = angle + 2 * math.pi * k / steps
            out.append((centre + r * math.cos(theta), centre + r * math.sin(theta)))
        return out

    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "ring":
        draw.ellipse(box, fill=255)
        hole = big * 0.22
        draw.ellipse((hole, hole, big - hole, big - hole), fill=0)
    elif kind == "square":
        draw.rounded_rectangle(box, radius=big * 0.18, fill=255)
    elif kind == "triangle":
        draw.polygon(polygon(3), fill=255)
    elif kind == "diamond":
        draw.polygon(polygon(4), fill=255)
    else:
        draw.polygon(polygon(5, inner=0.45), fill=255)
    return image.reduce(scale)


def soft_shadow(mask: Image.Image, radius: float) -> tuple[Image.Image, int]:
    """A blurred, 45%-opacity copy of `mask` on a canvas padded so the blur is not cut off.

    Returns the shadow and the padding, which the caller subtracts from the paste position.
    """
    pad = math.ceil(radius * 3)
    canvas = Image.new("L", (mask.width + 2 * pad, mask.height + 2 * pad), 0)
    canvas.paste(mask, (pad, pad))
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius))
    return blurred.point([round(v * 0.45) for v in range(256)]), pad


def shaded(colour: NDArray[np.float64], size: int) -> Image.Image:
    """A size x size RGB tile lit from the top-left, so flat shapes read as objects."""
    ramp = np.linspace(1.25, 0.8, size, dtype=np.float64)
    light = (ramp[:, None] + ramp[None, :]) / 2  # (size, size)
    pixels = np.clip(colour[None, None, :] * light[:, :, None], 0, 255)
    return Image.fromarray((pixels + 0.5).astype(np.uint8))
