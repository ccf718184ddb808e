"""Which providers this server can run, and what an operator must configure for the others."""

from __future__ import annotations

from reelserve.domain.models import RELAY, ModelEntry, Route
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
    RELAY: "the relay is not configured on this server (docs/providers/relay.md)",
}


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The providers that are installed and configured here, by route name: every route of
    every model (`ModelEntry.resolved_routes`) whose provider runs in this process. One
    instance serves every route of a shared provider without options of its own; a Veo route
    that names credentials gets a view of the one Veo provider over those (their slots and
    rate limits stay shared); a relay route is an instance of its own."""
    routes = [route for entry in settings.models for route in entry.resolved_routes()]
    check_route_names(routes)
    providers: dict[str, Provider] = {SANDBOX: SandboxProvider()}
    for route in routes:
        if route.provider == SANDBOX:
            providers[route.name] = providers[SANDBOX]
    local = [_route_entry(settings, r) for r in routes if r.provider == "diffusers"]
    if local:
        # Validated even where torch is missing, so every host shows the same capabilities.
        from reelserve.providers.diffusers.catalog import prepare_local_models

        models = prepare_local_models(local)
        # The sizes each resolution renders at and the model's details, as `GET /v1/models`
        # and the submit checks show them: the model's own entry takes them from its route.
        declared = settings.model_map()
        for model_id, prepared in models.items():
            declared[model_id].sizes = dict(prepared.entry.sizes)
            declared[model_id].details = dict(prepared.entry.details)
        if _local_runtime_installed():
            from reelserve.providers.diffusers.provider import DiffusersProvider

            diffusers = DiffusersProvider(models, device=settings.device)
            for route in routes:
                if route.provider == "diffusers":
                    providers[route.name] = diffusers
    if settings.google.configured:
        from reelserve.providers.google_veo.provider import GoogleVeoProvider

        veo = GoogleVeoProvider(settings.google, settings.model_map())
        for route in routes:
            if route.provider != "google_veo":
                continue
            if not route.own_options:
                providers[route.name] = veo
            elif route.name not in providers:
                served = {
                    r.model: _route_entry(settings, r) for r in routes if r.name == route.name
                }
                providers[route.name] = veo.view(route.name, _credential_selectors(route), served)
    relays = [r for r in routes if r.provider == RELAY]
    if relays:
        from reelserve.providers.relay import build_relay

        for route in relays:
            if route.name not in providers:
                providers[route.name] = build_relay(route.name, _route_entry(settings, route))
    return providers


def check_route_names(routes: list[Route]) -> None:
    """Two routes of one name are one route: the same provider with the same options of its
    own (a name is what task rows carry, so it must say where they run)."""
    first: dict[str, Route] = {}
    for route in routes:
        seen = first.setdefault(route.name, route)
        if seen.provider != route.provider or seen.own_options != route.own_options:
            raise ValueError(
                f"models: route {route.name!r} of model {route.model!r} differs from the route "
                f"of that name of model {seen.model!r} (provider or options); give one of "
                "them another name"
            )
        if route.provider == RELAY and seen.model != route.model:
            raise ValueError(
                f"models: relay route {route.name!r} serves models {seen.model!r} and "
                f"{route.model!r}; a relay route serves one model: give each its own name"
            )


def _route_entry(settings: Settings, route: Route) -> ModelEntry:
    """The model entry as this route's provider sees it: the route's provider and options."""
    entry = settings.model_map()[route.model]
    return entry.model_copy(update={"provider": route.provider, "options": dict(route.options)})


# What a google_veo route may set of its own: its credentials, and the upstream model ids
# (which a model of routes to several providers keeps out of the model's own options).
VEO_ROUTE_OPTIONS = frozenset({"credentials", "upstream_model", "vertex_model"})


def _credential_selectors(route: Route) -> list[str] | None:
    """A Veo route's `credentials` option: credential ids or backend names (gemini, vertex);
    None (not given): every configured credential."""
    unknown = sorted(set(route.own_options) - VEO_ROUTE_OPTIONS)
    if unknown:
        raise ValueError(
            f"models[{route.model}]: route {route.name!r}: options: a google_veo route takes "
            f"{', '.join(sorted(VEO_ROUTE_OPTIONS))}; got {', '.join(unknown)}"
        )
    if "credentials" not in route.own_options:
        return None
    chosen = route.own_options["credentials"]
    if (
        not isinstance(chosen, list)
        or not chosen
        or not all(isinstance(c, str) and c for c in chosen)
    ):
        raise ValueError(
            f"models[{route.model}]: route {route.name!r}: options.credentials: expected a "
            "list of credential ids or backend names (gemini, vertex); got "
            f"{chosen!r}"
        )
    return list(chosen)


def build_capabilities(
    settings: Settings, providers: dict[str, Provider]
) -> dict[str, Capabilities]:
    """The submit checks and model fitting by route name: those of the providers this
    process runs (`ProviderBase`'s defaults where a provider has none), and Veo's on an API
    host whose pollers run elsewhere (`remote_providers`: it knows their backends from
    `google.remote_backends`)."""
    found: dict[str, Capabilities] = dict(providers)
    remote = None
    for entry in settings.models:
        for route in entry.resolved_routes():
            if route.name in found or route.provider != "google_veo":
                continue
            if not is_remote(settings, route):
                continue
            if remote is None:
                from reelserve.providers.google_veo.capabilities import VeoCapabilities

                remote = VeoCapabilities.of_backends(
                    settings.google.remote_backends, vertex_4k=settings.google.vertex_4k
                )
            found[route.name] = remote
    return found


def is_remote(settings: Settings, route: Route) -> bool:
    """The route's workers run on other hosts (`remote_providers` names the route or its
    provider)."""
    return route.name in settings.remote_providers or route.provider in settings.remote_providers


def fit_models(
    models: dict[str, ModelEntry], capabilities: dict[str, Capabilities]
) -> dict[str, ModelEntry]:
    """Each model's capability table as its provider's configured backends can serve it (e.g.
    Veo without a Gemini API key has no 4K), so that `GET /v1/models` and the submit checks
    both say what the upstream will accept. A model of several routes is shown as declared:
    each route checks a submit against its own backends (`RoutePlan.choose`)."""
    fitted: dict[str, ModelEntry] = {}
    for model_id, entry in models.items():
        routes = entry.resolved_routes()
        found = capabilities.get(routes[0].name) if len(routes) == 1 else None
        fitted[model_id] = found.fit_model(entry) if found is not None else entry
    return fitted


def _local_runtime_installed() -> bool:
    """torch and diffusers are importable (checked without importing them: that takes seconds)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))


def not_configured_message(provider: str) -> str:
    return _HOW_TO_CONFIGURE.get(provider, f'provider "{provider}" is not available on this server')
