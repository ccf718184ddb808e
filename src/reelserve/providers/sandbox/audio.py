"""The sandbox's soundtrack: a soft pad and a plucked arpeggio, from the prompt and seed."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from reelserve.domain.spec import GenerationSpec
from reelserve.providers.sandbox.palette import stable_rng

SAMPLE_RATE = 48000


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
    key = stable_rng("key", spec.prompt)
    vary = stable_rng("tune", spec.prompt, spec.sample_seed(sample_index))
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
