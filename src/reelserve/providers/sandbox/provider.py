"""The offline sandbox provider: a procedural renderer that obeys every request parameter.

It exists so clients can be built and tested without a GPU, a network or an upstream bill: it needs
no weights, runs on a couple of CPU cores, and its output is a real H.264/AAC MP4 whose properties
(size, aspect ratio, duration, frame rate, sample count, seed, audio, first and last frame) are
exactly what was asked for. The picture is recognisably *about* the request:

* the prompt picks the palette (colour words in it such as "red" or "teal" are used as such, the
  rest comes from a hash of the prompt), the background pattern and the kinds of shapes, and the
  prompt itself is written on the frame;
* the seed picks the layout and motion of the shapes and the speed of the background, so each seed
  (and hence each sample of a task) is a different video, while the same request and seed give a
  bit-identical video;
* a negative prompt nudges the background pattern (slightly softer stripes at another angle);
* image-to-video starts exactly on the given first frame and ends exactly on the last one if given.

Speed: the background is computed once per clip as a horizontally periodic texture and each frame
is a window into it (a memory copy), the shapes are anti-aliased sprites drawn once and pasted with
Pillow's C blending, and the caption is one pre-rendered layer; nothing loops over pixels in Python.
Encoding uses x264's `veryfast` preset (see `DEFAULT_PRESET`) in reproducible mode, so the same
request and seed give the same file, not only the same pixels. Rendering and encoding block, so
`SandboxProvider.run` does them in a worker thread, which x264's own threads overlap with.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from reelserve.domain.spec import GenerationSpec
from reelserve.media.video import encode_mp4
from reelserve.providers.base import Clip, Frame, InputImages, ProviderBase, RunContext

SAMPLE_RATE = 48000
# x264 preset for sandbox clips. Measured on 2 cores, 8-second clips, render + encode:
#   1080p text-to-video:            veryfast 4.5 s / 1.27 MB, superfast 3.2 s / 1.25 MB,
#                                   ultrafast 2.6 s / 1.56 MB
#   720p image-to-video (a photo):  veryfast 3.8 s / 1.8 MB,  superfast 3.4 s / 2.5 MB,
#                                   ultrafast 3.4 s / 9.9 MB
# The faster presets save a second or two where x264 dominates (flat procedural frames), little
# where rendering does, and make textured content (anything from an input image) up to five times
# larger, which every client then downloads. `veryfast` is the balance.
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 23

# Colour words a person would expect to see honoured, with the RGB we use for them.
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "crimson": (180, 20, 60),
    "orange": (245, 130, 32),
    "amber": (255, 176, 0),
    "yellow": (250, 215, 50),
    "gold": (230, 180, 40),
    "golden": (230, 180, 40),
    "green": (60, 170, 75),
    "lime": (160, 220, 60),
    "olive": (128, 128, 40),
    "teal": (0, 128, 128),
    "cyan": (40, 200, 220),
    "turquoise": (64, 210, 200),
    "blue": (40, 90, 210),
    "navy": (20, 35, 110),
    "azure": (60, 150, 240),
    "purple": (128, 60, 170),
    "violet": (140, 90, 220),
    "magenta": (210, 40, 170),
    "pink": (240, 130, 180),
    "brown": (130, 80, 45),
    "beige": (220, 200, 160),
    "white": (235, 235, 235),
    "snow": (240, 244, 250),
    "silver": (180, 185, 195),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "black": (25, 25, 30),
    "sunset": (250, 110, 60),
    "ocean": (20, 100, 170),
    "sea": (30, 120, 170),
    "sky": (110, 170, 235),
    "forest": (30, 100, 50),
    "grass": (90, 170, 60),
    "fire": (240, 90, 20),
    "night": (20, 25, 60),
}
_WORD_RE = re.compile(r"[a-z]+")
_SHAPE_KINDS = ("circle", "ring", "square", "triangle", "diamond", "star")


def _digest(*parts: str | int) -> bytes:
    """A stable hash of the inputs (Python's `hash` is salted per process, so unusable here)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\x00")
    return h.digest()


def _rng(*parts: str | int) -> np.random.Generator:
    """A NumPy generator seeded from a stable hash of `parts`."""
    return np.random.default_rng(int.from_bytes(_digest(*parts)[:16], "big"))


def _mix(a: NDArray[np.float64], b: NDArray[np.float64] | float, w: float) -> NDArray[np.float64]:
    return a * (1.0 - w) + np.asarray(b, dtype=np.float64) * w


def prompt_palette(prompt: str) -> NDArray[np.float64]:
    """Five RGB colours (0..255, float) for a prompt: its colour words first, then hashed hues."""
    words = _WORD_RE.findall(prompt.lower())
    named: list[tuple[int, int, int]] = []
    for word in words:
        colour = COLOUR_WORDS.get(word)
        if colour is not None and colour not in named:
            named.append(colour)
    rng = _rng("palette", prompt)
    base_hue = float(rng.random())
    # A harmony (analogous, complementary or triadic) keeps hashed palettes pleasant.
    spread = float(rng.choice([0.08, 0.5, 1 / 3]))
    hashed: list[tuple[int, int, int]] = []
    for k in range(5):
        hue = (base_hue + spread * k + float(rng.normal(0, 0.02))) % 1.0
        sat = 0.55 + 0.35 * float(rng.random())
        val = 0.65 + 0.3 * float(rng.random())
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        hashed.append((round(r * 255), round(g * 255), round(b * 255)))
    colours = (named[:5] + hashed)[:5]
    return np.array(colours, dtype=np.float64)


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


def _scaled_mask(mask: Image.Image, strength: float) -> Image.Image:
    """`mask` with its alpha multiplied by `strength` (a 256-entry lookup table, in C)."""
    if strength >= 1.0:
        return mask
    lut = [round(v * strength) for v in range(256)]
    return mask.point(lut)


class _Scene:
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
        return _rng("look", name, self.prompt)

    def _motion(self, name: str) -> np.random.Generator:
        """Randomness that depends on the prompt and the seed (how it is laid out and moves)."""
        return _rng("motion", name, self.prompt, self.seed)

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
            neg = _rng("negative", self.negative)
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
            colour = _mix(self.palette[(k + 2) % 5], 255.0, 0.25)
            mask = _shape_mask(kind, size, float(m.uniform(0, 2 * math.pi)))
            rgb = _shaded(colour, size)
            shadow, shadow_pad = _soft_shadow(mask, max(1.0, size / 14))
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
        font = _font(size)
        box_width = round(self.width * 0.86)
        pad = max(4, size // 2)
        lines = _wrap(self.prompt, font, box_width - 2 * pad, max_lines=3)
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
        font = _font(size)
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
        r, g, b = (round(v) for v in _mix(self.palette[3], 255.0, 0.4))
        return r, g, b

    # -- composition --------------------------------------------------------------------------

    def overlay(self, image: Image.Image, index: int, strength: float) -> None:
        """Draw shapes, caption, label and the progress bar onto `image` at opacity `strength`."""
        seconds = index / self.fps
        for sprite in self.sprites:
            x, y = sprite.position(seconds)
            dx, dy = sprite.shadow_offset
            image.paste((0, 0, 0), (x + dx, y + dy), _scaled_mask(sprite.shadow, strength))
            image.paste(sprite.rgb, (x, y), _scaled_mask(sprite.mask, strength))
        for layer in (self.caption, self.label):
            image.paste(layer.rgb, layer.position, _scaled_mask(layer.alpha, strength))
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


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
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


def _wrap(
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


def _shape_mask(kind: str, size: int, angle: float) -> Image.Image:
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


def _soft_shadow(mask: Image.Image, radius: float) -> tuple[Image.Image, int]:
    """A blurred, 45%-opacity copy of `mask` on a canvas padded so the blur is not cut off.

    Returns the shadow and the padding, which the caller subtracts from the paste position.
    """
    pad = math.ceil(radius * 3)
    canvas = Image.new("L", (mask.width + 2 * pad, mask.height + 2 * pad), 0)
    canvas.paste(mask, (pad, pad))
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius))
    return blurred.point([round(v * 0.45) for v in range(256)]), pad


def _shaded(colour: NDArray[np.float64], size: int) -> Image.Image:
    """A size x size RGB tile lit from the top-left, so flat shapes read as objects."""
    ramp = np.linspace(1.25, 0.8, size, dtype=np.float64)
    light = (ramp[:, None] + ramp[None, :]) / 2  # (size, size)
    pixels = np.clip(colour[None, None, :] * light[:, :, None], 0, 255)
    return Image.fromarray((pixels + 0.5).astype(np.uint8))


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
    scene = _Scene(spec, seed)
    count = spec.frame_count
    width, height = spec.width, spec.height
    if images.first is None:
        for index in range(count):
            yield _frozen(scene.procedural(index))
        return

    first = _fit(images.first, width, height)
    last = _fit(images.last, width, height) if images.last is not None else None
    drift = _rng("drift", seed)
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


def render_audio(
    spec: GenerationSpec, sample_index: int, sample_rate: int = SAMPLE_RATE
) -> NDArray[np.float32]:
    """A stereo soundtrack of exactly the clip's length: shape (2, duration * sample_rate).

    A soft pad of triads following a four-chord progression, with a plucked arpeggio panned from
    side to side. The prompt picks the key and mode; the seed picks the progression, tempo and the
    arpeggio pattern. Peak level is about -10 dBFS, with short fades at both ends (no clicks).
    """
    n = spec.duration * sample_rate
    out = np.zeros((2, n), dtype=np.float64)
    key = _rng("key", spec.prompt)
    vary = _rng("tune", spec.prompt, spec.sample_seed(sample_index))
    root = 48 + int(key.integers(0, 12))  # C3..B3
    minor = bool(key.random() < 0.4)
    scale = [0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]
    degrees = [0, *(int(d) for d in vary.choice([1, 2, 3, 4, 5], size=3, replace=False))]
    chord_seconds = float(vary.choice([1.0, 1.5, 2.0]))
    steps_per_chord = int(vary.choice([4, 6, 8]))
    pattern = [int(p) for p in vary.permutation(4)]

    def freq(midi: float) -> float:
        return float(440.0 * 2.0 ** ((midi - 69) / 12))

    def note(degree: int, octave: int = 0) -> int:
        return root + 12 * (octave + degree // 7) + scale[degree % 7]

    chord_len = max(1, round(chord_seconds * sample_rate))
    for start in range(0, n, chord_len):
        length = min(chord_len, n - start)
        degree = degrees[(start // chord_len) % len(degrees)]
        t = np.arange(length, dtype=np.float64) / sample_rate
        # Raised-cosine attack and release at every chord change.
        edge = min(length // 2, int(0.08 * sample_rate))
        env = np.ones(length)
        if edge > 0:
            ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, edge))
            env[:edge] = ramp
            env[length - edge :] = ramp[::-1]
        triad = [note(degree), note(degree + 2), note(degree + 4)]
        for v, midi in enumerate(triad):
            f = freq(midi)
            tone = np.sin(2 * math.pi * f * t) + 0.25 * np.sin(4 * math.pi * f * t)
            pan = 0.3 + 0.4 * v / 2  # spread the voices across the stereo field
            out[0, start : start + length] += 0.07 * (1 - pan) * tone * env
            out[1, start : start + length] += 0.07 * pan * tone * env
        # The arpeggio: short plucks an octave (or two) up, alternating sides.
        step = chord_len / steps_per_chord
        for s in range(steps_per_chord):
            p0 = start + round(s * step)
            p1 = min(start + round((s + 1) * step), start + length)
            if p1 <= p0:
                break
            tp = np.arange(p1 - p0, dtype=np.float64) / sample_rate
            voice = pattern[s % 4]
            midi = triad[voice] + 12 if voice < 3 else triad[0] + 24
            pl = np.sin(2 * math.pi * freq(midi) * tp) * np.exp(-tp * 9.0)
            pl *= np.minimum(1.0, tp * (sample_rate / 48))  # 1 ms attack: no click
            pl[-min(len(pl), 48) :] *= np.linspace(1.0, 0.0, min(len(pl), 48))  # nor release
            side = 0.25 if s % 2 == 0 else 0.75
            out[0, p0:p1] += 0.12 * (1 - side) * pl
            out[1, p0:p1] += 0.12 * side * pl
    peak = float(np.abs(out).max()) or 1.0
    out *= 0.32 / peak
    fade = min(n // 2, int(0.02 * sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        out[:, :fade] *= ramp
        out[:, n - fade :] *= ramp[::-1]
    return out.astype(np.float32)


class SandboxProvider(ProviderBase):
    """The `sandbox` provider: renders every sample locally, on the CPU, in a worker thread.

    `preset` and `crf` are x264's; the default `veryfast` at CRF 23 is chosen from the
    measurements noted at `DEFAULT_PRESET` (8 s at 720p in about 2 s on two cores).
    """

    name = "sandbox"
    kind = "compute"  # renders here, on the CPU: the worker's compute slots

    def __init__(self, *, preset: str = DEFAULT_PRESET, crf: int = DEFAULT_CRF) -> None:
        self.preset = preset
        self.crf = crf

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        """Render `spec.sample_count` clips into `ctx.workdir` as `sample_<i>.mp4`.

        Nothing is checkpointed: a sample takes seconds, and a resumed attempt starts with a fresh
        work directory anyway, so rendering again is both cheaper and simpler than resuming.
        """
        clips: list[Clip] = []
        for index in range(spec.sample_count):
            ctx.check_cancelled()
            path = ctx.workdir / f"sample_{index}.mp4"
            await asyncio.to_thread(self._render_sample, spec, index, ctx, path)
            clips.append(Clip(path=path, seed=spec.sample_seed(index)))
        ctx.report_progress(1.0)
        return clips

    def _render_sample(self, spec: GenerationSpec, index: int, ctx: RunContext, path: Path) -> None:
        ctx.check_cancelled()  # a stop asked for while this thread was waiting to start
        total = spec.frame_count * spec.sample_count
        done_before = index * spec.frame_count

        def on_frame(frame_index: int) -> None:
            ctx.check_cancelled()
            ctx.report_progress((done_before + frame_index + 1) / total)

        audio = render_audio(spec, index, SAMPLE_RATE) if spec.generate_audio else None
        encode_mp4(
            path,
            render_frames(spec, index, ctx.images),
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            audio=audio,
            sample_rate=SAMPLE_RATE,
            crf=self.crf,
            preset=self.preset,
            on_frame=on_frame,
        )
