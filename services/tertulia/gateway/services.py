"""The shared clients of one gateway process, opened at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tertulia.gateway.autoscale import Autoscaler
from tertulia.gateway.backend import Backend
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline.auth import ApiKeys, WebSessions
from tertulia.gateway.pipeline.moderation import Moderator
from tertulia.gateway.pipeline.outage import StoreOutage
from tertulia.gateway.pipeline.retrieval import Retriever
from tertulia.gateway.routing import follow_replicas
from tertulia.gateway.settings import BackendSettings, GatewaySettings
from tertulia.gateway.store import Store, open_store

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: GatewaySettings
    metrics: GatewayMetrics
    backend: Backend
    store: Store
    api_keys: ApiKeys
    sessions: WebSessions
    moderator: Moderator
    retriever: Retriever | None = None
    autoscaler: Autoscaler | None = None
    # Whether the store failed a moment ago: requests then skip it (pipeline/outage.py).
    outage: StoreOutage = field(default_factory=StoreOutage)


@asynccontextmanager
async def open_services(
    settings: GatewaySettings, metrics: GatewayMetrics, retriever: Retriever | None = None
) -> AsyncIterator[Services]:
    if settings.redis_url is None:
        logger.warning(
            "no Redis configured: memory and rate limits live in this process only, "
            "are lost on restart and are not shared between replicas"
        )
    store = open_store(settings.redis_url, settings.redis_password_file, settings.redis_ca_file)
    backend = Backend(settings.backend, metrics)
    tasks = []
    autoscaler = None
    if settings.autoscaling.enabled:
        autoscaler = Autoscaler(settings.autoscaling, backend.router, store, metrics)
        backend.hold = autoscaler.hold
        tasks.append(asyncio.create_task(autoscaler.run(), name="autoscale-the-model"))
    if settings.backend.replicas:
        tasks.append(
            asyncio.create_task(
                follow_replicas(
                    backend.router,
                    settings.backend.replicas,
                    settings.backend.replicas_refresh_seconds,
                    metrics,
                    hurried=lambda: autoscaler is not None and autoscaler.waiting > 0,
                ),
                name="follow-model-replicas",
            )
        )
    guard = None
    if settings.moderation.guard_url is not None:
        guard = Backend(
            BackendSettings(
                url=settings.moderation.guard_url, model=settings.moderation.guard_model
            ),
            metrics,
        )
    api_keys = ApiKeys(settings.api_keys_dir)
    try:
        yield Services(
            settings=settings,
            metrics=metrics,
            backend=backend,
            store=store,
            api_keys=api_keys,
            sessions=WebSessions(api_keys, settings.web_chat_identity),
            moderator=Moderator(settings.moderation, metrics, guard),
            retriever=retriever,
            autoscaler=autoscaler,
        )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if autoscaler is not None:
            await autoscaler.aclose()
        await backend.aclose()
        await store.aclose()
        if guard is not None:
            await guard.aclose()
        if retriever is not None:
            await retriever.aclose()
