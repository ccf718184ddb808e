"""Veo's submit check and `GET /v1/models` view: what the configured backends can serve.

Shared by the provider (with its credentials' backends) and by `VeoCapabilities`, which an API
host that runs no Veo poller and holds no Google credentials uses instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.rules import VERTEX, Backend


class VeoCapabilities:
    """Veo's submit check and model listing for an API host that runs no Veo poller and holds
    no Google credentials (`remote_providers`): it trusts `google.remote_backends` to say which
    backends the pollers hold. The poller checks again with its own credentials."""

    def __init__(self, profiles: list[Backend]) -> None:
        self.profiles = profiles

    @classmethod
    def of_backends(cls, kinds: Sequence[str], *, vertex_4k: bool) -> VeoCapabilities:
        return cls([Backend(k, four_k=vertex_4k and k == VERTEX) for k in dict.fromkeys(kinds)])

    def admit(self, spec: GenerationSpec) -> None:
        admit(spec, self.profiles)

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        return fit_model(entry, self.profiles)


def admit(spec: GenerationSpec, profiles: list[Backend]) -> None:
    """Raise a 400 (`InvalidRequest` with `param`) unless some backend serves `spec`."""
    refused = rules.refusal(spec, profiles)
    if refused is not None:
        param, message = refused
        raise InvalidRequest(message, param=param)


def profile_label(profile: Backend) -> str:
    return profile.kind + (" (restricted region)" if profile.restricted_region else "")


def fit_model(entry: ModelEntry, profiles: list[Backend]) -> ModelEntry:
    """`entry` as these backends can serve it: the resolutions (and their durations) some
    backend serves, and per backend what it can do (`GET /v1/models`)."""
    if not profiles:
        return entry
    resolutions = [
        r for r in entry.resolutions if any(rules.resolution_rule(p, r) for p in profiles)
    ]
    durations: dict[str, list[int]] = {}
    for resolution in resolutions:
        allowed = sorted(
            {
                d
                for p in profiles
                if (row := rules.resolution_rule(p, resolution)) is not None
                for d in row.durations
                if d in entry.durations
            }
        )
        if allowed != sorted(entry.durations):
            durations[resolution] = allowed
    backends = {profile_label(p): rules.describe(p) for p in profiles}
    return entry.model_copy(
        update={"resolutions": resolutions, "resolution_durations": durations, "backends": backends}
    )
