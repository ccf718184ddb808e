"""The sandbox's colours and randomness: a prompt's palette (its colour words first, then hues
from a hash of it), and generators seeded from a stable hash, so the same request gives the same
video in every process (Python's `hash` is salted per process)."""

from __future__ import annotations

import colorsys
import hashlib
import re

import numpy as np
from numpy.typing import NDArray

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


def _digest(*parts: str | int) -> bytes:
    """A stable hash of the inputs (Python's `hash` is salted per process, so unusable here)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\x00")
    return h.digest()


def stable_rng(*parts: str | int) -> np.random.Generator:
    """A NumPy generator seeded from a stable hash of `parts`."""
    return np.random.default_rng(int.from_bytes(_digest(*parts)[:16], "big"))


def mix(a: NDArray[np.float64], b: NDArray[np.float64] | float, w: float) -> NDArray[np.float64]:
    return a * (1.0 - w) + np.asarray(b, dtype=np.float64) * w


def prompt_palette(prompt: str) -> NDArray[np.float64]:
    """Five RGB colours (0..255, float) for a prompt: its colour words first, then hashed hues."""
    words = _WORD_RE.findall(prompt.lower())
    named: list[tuple[int, int, int]] = []
    for word in words:
        colour = COLOUR_WORDS.get(word)
        if colour is not None and colour not in named:
            named.append(colour)
    rng = stable_rng("palette", prompt)
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
