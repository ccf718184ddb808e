"""Which providers this server can run, and what an operator must configure for the others."""

from __future__ import annotations

from reelserve.providers.base import Provider
from reelserve.providers.sandbox import SandboxProvider
from reelserve.settings import Settings

SANDBOX = "sandbox"

_HOW_TO_CONFIGURE = {
    "google_veo": (
        "Google Veo is not configured on this server: set REELSERVE_GOOGLE__API_KEY "
        "(Gemini API) or REELSERVE_GOOGLE__PROJECT (Vertex AI)"
    ),
    "diffusers": (
        "local models are not configured on this server: install reelserve[local] and "
        "declare the model's checkpoint directory in settings"
    ),
}


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The providers that are installed and configured here, by name."""
    providers: dict[str, Provider] = {SANDBOX: SandboxProvider()}
    return providers


def not_configured_message(provider: str) -> str:
    return _HOW_TO_CONFIGURE.get(provider, f'provider "{provider}" is not available on this server')
