"""Whether a request can run here, decided at submit: what is refused now is a 400, never a
task that fails later.

A submit body is parsed against the configured models (`domain.spec`), routed (a test key's to
the sandbox, a live key's to the first of its model's routes that this process runs, or that
`remote_providers` says workers elsewhere do, and whose upstream rules, such as Veo's
backends, serve the request exactly as asked: providers/routes.py), and its images and
webhook URL checked as far as can be known before any fetch. The outbound policies are built
once, from settings, when the server opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import ModelEntry, Route
from reelserve.domain.spec import GenerationSpec, parse_generation_request
from reelserve.media.images import FetchPolicy, ImageInputError, check_image_source
from reelserve.net.guard import OutboundError, check_destination
from reelserve.providers.base import Capabilities, Provider
from reelserve.providers.registry import SANDBOX, is_remote, not_configured_message
from reelserve.providers.routes import NoRoute, RoutePlan
from reelserve.settings import Settings
from reelserve.store.keys import ApiKey
from reelserve.store.webhooks import WebhookStore

REMOTE_WORKERS = "remote workers"  # `runs_on` of a model whose workers run elsewhere


def image_policy(settings: Settings) -> FetchPolicy:
    """What client-supplied image URLs may reach (`image_allow_*` settings)."""
    return FetchPolicy(
        allow_hosts=tuple(settings.image_allow_hosts),
        allow_networks=tuple(settings.image_allow_networks),
        resolve_overrides=dict(settings.image_resolve_overrides),
    )


def webhook_policy(settings: Settings) -> FetchPolicy:
    """What webhook URLs may reach (`webhook_allow_*` settings), and how long a delivery takes."""
    return FetchPolicy(
        allow_hosts=tuple(settings.webhook_allow_hosts),
        allow_networks=tuple(settings.webhook_allow_networks),
        total_timeout=settings.webhook_timeout,
    )


@dataclass(frozen=True)
class Admitted:
    """A request that can run: its spec, its model and the provider it is queued for."""

    spec: GenerationSpec
    entry: ModelEntry
    provider: str  # the route's name (docs/routing.md), what the task row carries


class Admission:
    def __init__(
        self,
        settings: Settings,
        models: Mapping[str, ModelEntry],
        providers: Mapping[str, Provider],
        capabilities: Mapping[str, Capabilities],
        webhooks: WebhookStore,
    ) -> None:
        self.settings = settings
        self.models = models
        self.providers = providers  # the process's own mapping (by route): tests add to it
        self.capabilities = capabilities
        self.routes = RoutePlan(models, capabilities, self.runnable)
        self.webhooks = webhooks
        self.image_policy = image_policy(settings)
        self.webhook_policy = webhook_policy(settings)

    def runnable(self, route: Route) -> bool:
        """The route runs in this process, or on workers elsewhere (`remote_providers`)."""
        return route.name in self.providers or is_remote(self.settings, route)

    def runs_on(self, key: ApiKey, entry: ModelEntry) -> str | None:
        """Where this key's tasks of `entry` run: "sandbox" for a test key; the first route
        of the model that runs here (its name); `REMOTE_WORKERS` when it runs only on
        workers elsewhere (`remote_providers`); None when no route can."""
        if key.is_test:
            return SANDBOX
        for route in entry.resolved_routes():
            if route.name in self.providers:
                return route.name
            if is_remote(self.settings, route):
                return REMOTE_WORKERS
        return None

    def route_for(self, key: ApiKey, spec: GenerationSpec, *, deal: bool = True) -> str:
        """The route a task of this key and spec is queued on (`RoutePlan.choose`: the first
        that runs and serves it exactly as asked), or a 400 naming what to configure or the
        field no route serves."""
        if key.is_test:
            return SANDBOX
        try:
            return self.routes.choose(spec, deal=deal).name
        except NoRoute:
            entry = self.models[spec.model]
            raise InvalidRequest(
                f'model "{entry.id}" cannot run for this live key: '
                f"{not_configured_message(entry.provider)}; or use a test key to run it on "
                "the sandbox",
                param="model",
            ) from None

    async def admit(self, key: ApiKey, body: object, *, deal: bool = True) -> Admitted:
        """Parse and check a submit body (every refusal names its field). `deal=False` (an
        estimate) leaves the weighted routes' deal as it is."""
        spec = parse_generation_request(
            body, self.models, allow_http_webhooks=self.settings.allow_http_webhooks
        )
        entry = self.models[spec.model]
        # The upstream refuses some requests its model entry allows (Veo's backends): each
        # route checks the request against its own.
        route = self.route_for(key, spec, deal=deal)
        await self.check_images(spec)
        if spec.webhook_url is not None:
            await self.check_webhook(key, spec.webhook_url)
        return Admitted(spec, entry, route)

    async def check_images(self, spec: GenerationSpec) -> None:
        """What can be known at submit (scheme, address, data URL contents) is a 400 now;
        the rest (the fetch itself) fails the task with `invalid_image` later."""
        for param, source in (
            ("first_frame_image", spec.first_frame_image),
            ("last_frame_image", spec.last_frame_image),
        ):
            if source is None:
                continue
            try:
                await check_image_source(source, param, self.image_policy)
            except ImageInputError as exc:
                raise InvalidRequest(exc.message, param=param) from None

    async def check_webhook(self, key: ApiKey, url: str) -> None:
        """What can be known at submit: the key can sign, and the target's address is public
        (or allowed). Delivery checks the address again, since DNS answers change."""
        if not await self.webhooks.has_secret(key.id):
            raise InvalidRequest(
                "this API key has no webhook signing secret (it was created before webhooks "
                "existed); the operator can give it one with `reelserve keys "
                "rotate-webhook-secret`",
                param="webhook_url",
            )
        try:
            await check_destination(url, "webhook_url", self.webhook_policy)
        except OutboundError as exc:
            raise InvalidRequest(exc.message, param="webhook_url") from None
