"""The composition root: the parts of one running server, built once from settings.

`Reelserve.open` builds the store (engine, queue, keys, webhooks, usage), the storage, the file
signer, the providers this process runs with their capabilities, and the models fitted to them;
then the operations over those parts (`access`, `tasks`, `files`). A worker is handed only what
it uses (`worker_parts`), never this object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from reelserve.core.access import Access
from reelserve.core.admin import Admin
from reelserve.core.admission import Admission
from reelserve.core.files import Files
from reelserve.core.limits import SubmitLimits
from reelserve.core.tasks import Tasks
from reelserve.domain.models import ModelEntry
from reelserve.metrics import Metrics
from reelserve.providers.base import Capabilities, Provider
from reelserve.providers.registry import build_capabilities, build_providers, fit_models
from reelserve.settings import Settings
from reelserve.storage.base import Storage
from reelserve.storage.factory import open_storage
from reelserve.storage.signing import Signer
from reelserve.store.db import create_engine, upgrade
from reelserve.store.keys import KeyStore
from reelserve.store.ledger import LedgerStore
from reelserve.store.limits import LimitReads
from reelserve.store.queue import TaskQueue
from reelserve.store.usage import UsageStore
from reelserve.store.usage_days import DailyUsage
from reelserve.store.webhooks import WebhookStore
from reelserve.worker.parts import WorkerParts


@dataclass
class Reelserve:
    settings: Settings
    queue: TaskQueue
    keys: KeyStore
    webhooks: WebhookStore
    storage: Storage
    signer: Signer
    providers: dict[str, Provider]
    models: dict[str, ModelEntry]
    usage: UsageStore
    capabilities: dict[str, Capabilities] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # The operations, over the parts above.
    access: Access = field(init=False)
    admin: Admin = field(init=False)
    admission: Admission = field(init=False)
    files: Files = field(init=False)
    tasks: Tasks = field(init=False)

    def __post_init__(self) -> None:
        self.access = Access(self.keys, self.webhooks)
        self.admin = Admin(
            self.access,
            DailyUsage(self.queue.engine),
            LedgerStore(self.queue.engine),
            tuple(self.models),
            self.settings.google.currency,
        )
        self.admission = Admission(
            self.settings, self.models, self.providers, self.capabilities, self.webhooks
        )
        self.files = Files(self.signer, self.settings.public_url)
        self.tasks = Tasks(
            queue=self.queue,
            webhooks=self.webhooks,
            storage=self.storage,
            admission=self.admission,
            files=self.files,
            limits=SubmitLimits(LimitReads(self.queue.engine)),
        )

    @classmethod
    async def open(
        cls, settings: Settings, *, migrate: bool = True, metrics: Metrics | None = None
    ) -> Reelserve:
        settings.ensure_dirs()
        engine = create_engine(settings.resolved_database_url)
        if migrate:
            await upgrade(engine)
        providers = build_providers(settings)
        capabilities = build_capabilities(settings, providers)
        queue = TaskQueue(engine)
        return cls(
            settings=settings,
            queue=queue,
            keys=KeyStore(engine, queue.reader),
            webhooks=WebhookStore(engine, settings.signing_key()),
            storage=open_storage(settings),
            signer=Signer(settings.signing_key()),
            providers=providers,
            models=fit_models(settings.model_map(), capabilities),
            usage=UsageStore(engine),
            capabilities=capabilities,
            metrics=metrics or Metrics(),
        )

    async def close(self) -> None:
        self.queue.close()
        await self.queue.engine.dispose()

    async def ready(self) -> None:
        """Raises unless the database and the storage answer (`/readyz`)."""
        await self.queue.ping()
        await asyncio.to_thread(self.storage.ping)

    async def refresh_metrics(self) -> None:
        """The task gauges, read from the store (tasks run in every process)."""
        stats = await self.queue.stats()
        self.metrics.set_task_stats(
            stats.counts, stats.oldest_pending, self.models, routes=stats.routes
        )

    def worker_parts(self) -> WorkerParts:
        """What a worker of this process is given (it never sees this object)."""
        return WorkerParts(
            settings=self.settings,
            queue=self.queue,
            storage=self.storage,
            providers=self.providers,
            routes=self.admission.routes,
            usage=self.usage,
            webhooks=self.webhooks,
            metrics=self.metrics,
            image_policy=self.admission.image_policy,
            webhook_policy=self.admission.webhook_policy,
            render_task=self.tasks.render,
        )
