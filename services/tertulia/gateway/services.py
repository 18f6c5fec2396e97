"""The shared clients of one gateway process, opened at start-up and closed at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from tertulia.gateway.backend import Backend
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline.auth import ApiKeys
from tertulia.gateway.pipeline.moderation import Moderator
from tertulia.gateway.pipeline.retrieval import Retriever
from tertulia.gateway.settings import GatewaySettings
from tertulia.gateway.store import Store, open_store

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: GatewaySettings
    metrics: GatewayMetrics
    backend: Backend
    store: Store
    api_keys: ApiKeys
    moderator: Moderator
    retriever: Retriever | None = None


@asynccontextmanager
async def open_services(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    retriever: Retriever | None = None,
    backend_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Services]:
    if settings.redis_url is None:
        logger.warning(
            "no Redis configured: memory and rate limits live in this process only, "
            "are lost on restart and are not shared between replicas"
        )
    store = open_store(settings.redis_url)
    backend = Backend(settings.backend, metrics, backend_transport)
    guard_http = httpx.AsyncClient(timeout=10) if settings.moderation.guard_url else None
    try:
        yield Services(
            settings=settings,
            metrics=metrics,
            backend=backend,
            store=store,
            api_keys=ApiKeys(settings.api_keys_dir),
            moderator=Moderator(settings.moderation, metrics, guard_http),
            retriever=retriever,
        )
    finally:
        await backend.aclose()
        await store.aclose()
        if guard_http is not None:
            await guard_http.aclose()
        if retriever is not None:
            await retriever.aclose()
