"""The sandbox's picture: one clip's scene, built once (the scrolling background texture, the
shape sprites and their paths, the caption and label layers) and composed per frame with a crop,
a few small pastes and a packing copy. The prompt picks what the picture is (palette, pattern,
kinds of shapes, caption); the seed how it is laid out and moves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

from reelserve.domain.spec import GenerationSpec
from reelserve.providers.sandbox.drawing import (
    load_font,
    scaled_mask,
    shaded,
    shape_mask,
    soft_shadow,
    wrap,
)
from reelserve.providers.sandbox.palette import mix, prompt_palette, stable_rng

_SHAPE_KINDS = ("circle", "ring", "square", "triangle", "diamond", "star")


@dataclass(frozen=True)
class _Sprite:
    """One moving shape: its pre-rendered pixels and its path (in pixels, seconds)."""

    rgb: Image.Image
    mask: Image.Image
    shadow: Image.Image
    shadow_offset: tuple[int, int]
    centre: tuple[float, float]
    amplitude: tuple[float, float]
    frequency: tuple[float, float]
    phase: tuple[float, float]

    def position(self, seconds: float) -> tuple[int, int]:
        """Top-left corner at time `seconds` (integer pixels, for Pillow's paste)."""
        x = self.centre[0] + self.amplitude[0] * math.sin(
            2 * math.pi * self.frequency[0] * seconds + self.phase[0]
        )
        y = self.centre[1] + self.amplitude[1] * math.sin(
            2 * math.pi * self.frequency[1] * seconds + self.phase[1]
        )
        return round(x - self.rgb.width / 2), round(y - self.rgb.height / 2)


@dataclass(frozen=True)
class _Layer:
    """A pre-rendered overlay split into colour and alpha, as Pillow's `paste` wants them."""

    rgb: Image.Image
    alpha: Image.Image
    position: tuple[int, int]

    @classmethod
    def of(cls, rgba: Image.Image, position: tuple[int, int]) -> _Layer:
        return cls(rgba.convert("RGB"), rgba.getchannel("A"), position)


class Scene:
    """Everything about one clip that does not change from frame to frame.

    Built once per clip: the scrolling background texture, the shape sprites and their paths, the
    caption and label layers. Each frame then costs a crop, a few small pastes and a packing copy.
    """

    def __init__(self, spec: GenerationSpec, seed: int) -> None:
        self.width = spec.width
        self.height = spec.height
        self.fps = spec.fps
        self.frame_count = spec.frame_count
        self.seed = seed
        self.prompt = spec.prompt
        self.negative = spec.negative_prompt or ""
        self.palette = prompt_palette(spec.prompt)
        self.unit = min(self.width, self.height)  # sizes scale with the short side (9:16 too)

    # Every property draws from its own generator, so the result never depends on the order in
    # which properties happen to be first used (which differs between text and image modes).
    def _look(self, name: str) -> np.random.Generator:
        """Randomness that depends on the prompt only (what the picture is)."""
        return stable_rng("look", name, self.prompt)

    def _motion(self, name: str) -> np.random.Generator:
        """Randomness that depends on the prompt and the seed (how it is laid out and moves)."""
        return stable_rng("motion", name, self.prompt, self.seed)

    # -- background -------------------------------------------------------------------------

    @cached_property
    def period(self) -> int:
        """Horizontal period of the background pattern in pixels (the texture repeats with it)."""
        return max(16, round(self.unit * float(self._look("period").uniform(0.3, 0.55))))

    @cached_property
    def texture(self) -> Image.Image:
        """A (width + period) x height RGB texture, periodic in x: frames are windows into it.

        A vertical gradient between two darkened palette colours with soft diagonal bands of a
        third. The bands' phase is x / period + y * slope / period, which is periodic in x for any
        slope, so scrolling by up to one period wraps seamlessly.
        """
        width, height, period = self.width + self.period, self.height, self.period
        top = self.palette[0] * 0.55
        bottom = self.palette[1] * 0.35
        band = self.palette[2] * 0.8
        slope = float(self._look("slope").uniform(-1.2, 1.2))
        strength = 0.42
        if self.negative:
            neg = stable_rng("negative", self.negative)
            slope += float(neg.uniform(-0.25, 0.25))
            strength *= 0.8
        xs = np.arange(width, dtype=np.float32)[None, :]
        out = np.empty((height, width, 3), dtype=np.uint8)
        # In blocks of rows, so a 4K texture needs a few MB of float temporaries, not hundreds.
        for y0 in range(0, height, 256):
            rows = np.arange(y0, min(y0 + 256, height), dtype=np.float32)[:, None]
            phase = (xs + rows * np.float32(slope)) * np.float32(2 * math.pi / period)
            bands = (0.5 + 0.5 * np.cos(phase)) ** 3 * np.float32(strength)  # peaky bands
            ys = rows / np.float32(max(1, height - 1))
            for c in range(3):
                base = np.float32(top[c]) + np.float32(bottom[c] - top[c]) * ys  # (rows, 1)
                channel = base + (np.float32(band[c]) - base) * bands
                out[y0 : y0 + len(rows), :, c] = np.clip(channel + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(out)

    @cached_property
    def scroll(self) -> tuple[float, float]:
        """Background start offset (pixels) and speed (signed pixels per frame).

        One period passes every 2-5 seconds; the start offset differs per seed so that even the
        first frames of two samples differ everywhere, not only where the shapes are.
        """
        rng = self._motion("scroll")
        start = float(rng.uniform(0, self.period))
        seconds = float(rng.uniform(2.0, 5.0))
        direction = 1.0 if rng.random() < 0.5 else -1.0
        return start, direction * self.period / (seconds * self.fps)

    def background(self, index: int) -> Image.Image:
        start, speed = self.scroll
        offset = round(start + index * speed) % self.period
        return self.texture.crop((offset, 0, offset + self.width, self.height))

    # -- shapes -------------------------------------------------------------------------------

    @cached_property
    def sprites(self) -> list[_Sprite]:
        """3-6 shapes: kinds and colours from the prompt, sizes and paths from the seed."""
        look = self._look("shapes")
        count = int(look.integers(3, 7))
        kinds = [str(k) for k in look.choice(_SHAPE_KINDS, size=count)]
        m = self._motion("shapes")
        sprites = []
        sizes = sorted((float(m.uniform(0.12, 0.3)) for _ in range(count)), reverse=True)
        for k, (kind, rel) in enumerate(zip(kinds, sizes, strict=True)):
            size = max(8, round(self.unit * rel))
            colour = mix(self.palette[(k + 2) % 5], 255.0, 0.25)
            mask = shape_mask(kind, size, float(m.uniform(0, 2 * math.pi)))
            rgb = shaded(colour, size)
            shadow, shadow_pad = soft_shadow(mask, max(1.0, size / 14))
            sprites.append(
                _Sprite(
                    rgb=rgb,
                    mask=mask,
                    shadow=shadow,
                    shadow_offset=(
                        max(1, size // 22) - shadow_pad,
                        max(1, size // 14) - shadow_pad,
                    ),
                    centre=(
                        float(m.uniform(0.2, 0.8)) * self.width,
                        float(m.uniform(0.2, 0.75)) * self.height,
                    ),
                    amplitude=(
                        float(m.uniform(0.08, 0.25)) * self.width,
                        float(m.uniform(0.05, 0.2)) * self.height,
                    ),
                    frequency=(float(m.uniform(0.08, 0.3)), float(m.uniform(0.08, 0.3))),
                    phase=(float(m.uniform(0, 2 * math.pi)), float(m.uniform(0, 2 * math.pi))),
                )
            )
        return sprites

    # -- text ---------------------------------------------------------------------------------

    @cached_property
    def caption(self) -> _Layer:
        """The prompt in a translucent box near the bottom."""
        size = max(10, round(self.unit / 17))
        font = load_font(size)
        box_width = round(self.width * 0.86)
        pad = max(4, size // 2)
        lines = wrap(self.prompt, font, box_width - 2 * pad, max_lines=3)
        line_height = round(size * 1.25)
        box_height = line_height * len(lines) + 2 * pad
        layer = Image.new("RGBA", (box_width, box_height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        draw.rounded_rectangle(
            (0, 0, box_width - 1, box_height - 1), radius=pad, fill=(10, 10, 16, 150)
        )
        stroke = max(1, size // 16)
        for k, line in enumerate(lines):
            draw.text(
                (pad, pad + k * line_height),
                line,
                font=font,
                fill=(255, 255, 255, 255),
                stroke_width=stroke,
                stroke_fill=(0, 0, 0, 255),
            )
        x = (self.width - box_width) // 2
        y = self.height - box_height - max(6, round(self.unit * 0.05))
        return _Layer.of(layer, (x, y))

    @cached_property
    def label(self) -> _Layer:
        """A small "sandbox - seed N" tag in the top-left corner, so nobody mistakes the output."""
        size = max(8, round(self.unit / 40))
        font = load_font(size)
        text = f"sandbox \u00b7 seed {self.seed}"
        right, bottom = (math.ceil(v) for v in font.getbbox(text)[2:])
        pad = max(3, size // 3)
        layer = Image.new("RGBA", (right + 2 * pad, bottom + 2 * pad), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        draw.rounded_rectangle(
            (0, 0, layer.width - 1, layer.height - 1), radius=pad, fill=(0, 0, 0, 110)
        )
        draw.text((pad, pad), text, font=font, fill=(255, 255, 255, 230))
        margin = max(4, round(self.unit * 0.025))
        return _Layer.of(layer, (margin, margin))

    @cached_property
    def bar_colour(self) -> tuple[int, int, int]:
        r, g, b = (round(v) for v in mix(self.palette[3], 255.0, 0.4))
        return r, g, b

    # -- composition --------------------------------------------------------------------------

    def overlay(self, image: Image.Image, index: int, strength: float) -> None:
        """Draw shapes, caption, label and the progress bar onto `image` at opacity `strength`."""
        seconds = index / self.fps
        for sprite in self.sprites:
            x, y = sprite.position(seconds)
            dx, dy = sprite.shadow_offset
            image.paste((0, 0, 0), (x + dx, y + dy), scaled_mask(sprite.shadow, strength))
            image.paste(sprite.rgb, (x, y), scaled_mask(sprite.mask, strength))
        for layer in (self.caption, self.label):
            image.paste(layer.rgb, layer.position, scaled_mask(layer.alpha, strength))
        bar = max(2, self.height // 180)
        filled = round(self.width * (index + 1) / max(1, self.frame_count))
        if filled > 0:
            region = (0, self.height - bar, filled, self.height)
            mask = Image.new("L", (filled, bar), round(255 * min(1.0, strength)))
            image.paste(self.bar_colour, region, mask)

    def procedural(self, index: int) -> Image.Image:
        image = self.background(index)
        self.overlay(image, index, 1.0)
        return image
