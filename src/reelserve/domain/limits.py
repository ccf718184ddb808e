"""A key's limits and their checks: pure values, shared by the CLI and the admin API.

`KeyLimits` is what an API key may do: at most `max_running` tasks processing at once,
`rate_per_minute` submits in any 60 seconds, a `budget` in the price currency, and only the
`models` listed. None means no limit. `parse_limit_changes` reads a set of changes (a PATCH
body, the CLI's options): a member that is absent stays as it was, JSON null clears that limit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from reelserve.domain.errors import InvalidRequest, describe

LIMIT_FIELDS = ("max_running", "rate_per_minute", "budget", "models")
MAX_COUNT = 1_000_000  # the largest max_running / rate_per_minute accepted
MAX_BUDGET = 1e12
MAX_MODELS = 1000
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class KeyLimits:
    max_running: int | None = None
    rate_per_minute: int | None = None
    budget: float | None = None
    models: tuple[str, ...] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def as_json(self) -> dict[str, Any]:
        return {
            "max_running": self.max_running,
            "rate_per_minute": self.rate_per_minute,
            "budget": self.budget,
            "models": list(self.models) if self.models is not None else None,
        }


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"{name} must be a positive integer or null (got {describe(value)})", param=name
        )
    if not 1 <= value <= MAX_COUNT:
        raise InvalidRequest(f"{name} must be between 1 and {MAX_COUNT} (got {value})", param=name)
    return value


def _budget(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(
            f"budget must be a non-negative number or null (got {describe(value)})",
            param="budget",
        )
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= MAX_BUDGET:
        raise InvalidRequest(
            f"budget must be between 0 and {MAX_BUDGET:g} (got {describe(value)})",
            param="budget",
        )
    return number


def _models(value: object, known: Collection[str]) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidRequest(
            f"models must be a non-empty array of model ids or null (got {describe(value)})",
            param="models",
        )
    if len(value) > MAX_MODELS:
        raise InvalidRequest(
            f"models may list at most {MAX_MODELS} ids (got {len(value)})", param="models"
        )
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise InvalidRequest(
                f"models must list model ids as strings (got {describe(item)})", param="models"
            )
        if item not in known:
            raise InvalidRequest(
                f"models: {describe(item)} is not a configured model; configured models: "
                f"{', '.join(sorted(known))}",
                param="models",
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_limit_changes(
    changes: Mapping[str, object], known_models: Collection[str]
) -> dict[str, Any]:
    """The limits to set (value) or clear (None), checked; members other than the limits'
    are not looked at here."""
    out: dict[str, Any] = {}
    for name in LIMIT_FIELDS:
        if name not in changes:
            continue
        value = changes[name]
        if value is None:
            out[name] = None
        elif name == "budget":
            out[name] = _budget(value)
        elif name == "models":
            out[name] = _models(value, known_models)
        else:
            out[name] = _count(name, value)
    return out


def retry_after(window_starts: list[float], limit: int, now: float) -> int | None:
    """Seconds until one more submit fits a rate of `limit` per minute, given the creation
    times of the key's newest submits in the last minute (at most `limit` of them, any order);
    None when it fits now. The oldest of the `limit` newest leaves the window 60 s after it
    came, and from then on the window holds `limit - 1`."""
    recent = [t for t in window_starts if t > now - RATE_WINDOW_SECONDS]
    if len(recent) < limit:
        return None
    oldest = sorted(recent)[-limit]
    return max(1, math.ceil(oldest + RATE_WINDOW_SECONDS - now))
