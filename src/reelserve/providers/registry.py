"""Which providers this server can run, and what an operator must configure for the others."""

from __future__ import annotations

from reelserve.domain.models import ModelEntry
from reelserve.providers.base import Capabilities, Provider
from reelserve.providers.sandbox.provider import SandboxProvider
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
    local = [m for m in settings.models if m.provider == "diffusers"]
    if local:
        # Validated even where torch is missing, so every host shows the same capabilities.
        from reelserve.providers.diffusers.catalog import prepare_local_models

        models = prepare_local_models(local)
        if _local_runtime_installed():
            from reelserve.providers.diffusers.provider import DiffusersProvider

            providers["diffusers"] = DiffusersProvider(models, device=settings.device)
    if settings.google.configured:
        from reelserve.providers.google_veo.provider import GoogleVeoProvider

        providers["google_veo"] = GoogleVeoProvider(settings.google, settings.model_map())
    return providers


def build_capabilities(
    settings: Settings, providers: dict[str, Provider]
) -> dict[str, Capabilities]:
    """The submit checks and model fitting by provider name: those of the providers this
    process runs (`ProviderBase`'s defaults where a provider has none), and Veo's on an API
    host whose pollers run elsewhere (`remote_providers`: it knows their backends from
    `google.remote_backends`)."""
    found: dict[str, Capabilities] = dict(providers)
    if "google_veo" not in found and "google_veo" in settings.remote_providers:
        from reelserve.providers.google_veo.capabilities import VeoCapabilities

        found["google_veo"] = VeoCapabilities.of_backends(
            settings.google.remote_backends, vertex_4k=settings.google.vertex_4k
        )
    return found


def fit_models(
    models: dict[str, ModelEntry], capabilities: dict[str, Capabilities]
) -> dict[str, ModelEntry]:
    """Each model's capability table as its provider's configured backends can serve it (e.g.
    Veo without a Gemini API key has no 4K), so that `GET /v1/models` and the submit checks
    both say what the upstream will accept."""
    fitted: dict[str, ModelEntry] = {}
    for model_id, entry in models.items():
        found = capabilities.get(entry.provider)
        fitted[model_id] = found.fit_model(entry) if found is not None else entry
    return fitted


def _local_runtime_installed() -> bool:
    """torch and diffusers are importable (checked without importing them: that takes seconds)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))


def not_configured_message(provider: str) -> str:
    return _HOW_TO_CONFIGURE.get(provider, f'provider "{provider}" is not available on this server')
