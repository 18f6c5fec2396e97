"""The gateway's FastAPI app, built by a factory; the lifespan opens and closes its clients."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from tertulia.gateway.errors import install_error_handlers
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.middleware import RequestContextMiddleware
from tertulia.gateway.pipeline.retrieval import Retriever, WeaviateRetriever
from tertulia.gateway.routes import (
    chat,
    completions,
    conversations,
    events,
    health,
    knowledge,
    observability,
    web,
)
from tertulia.gateway.services import open_services
from tertulia.gateway.settings import GatewaySettings, get_settings


def create_app(
    settings: GatewaySettings | None = None,
    *,
    retriever: Retriever | None = None,
) -> FastAPI:
    """The app; `retriever` plugs in the knowledge base."""
    settings = settings or get_settings()
    if retriever is None and settings.knowledge_base.enabled:
        retriever = WeaviateRetriever(settings.knowledge_base)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, app.state.metrics, retriever) as services:
            app.state.services = services
            # Start-up objects live as long as the process: keeping them out of the cyclic
            # collector's scans removes most of its pauses from request latency.
            gc.freeze()
            yield

    app = FastAPI(
        title="Tertulia gateway",
        version=version("tertulia"),
        description="Chat with this cluster's private assistant: an OpenAI-compatible API and "
        "a simple chat API with memory and sources.",
        lifespan=lifespan,
    )
    # Metrics exist before the lifespan so the middleware, built at start-up, can hold them.
    app.state.metrics = GatewayMetrics.create()
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        max_upload_bytes=settings.knowledge_base.max_upload_bytes,
    )
    install_error_handlers(app)
    for router in (
        chat.router,
        completions.router,
        conversations.router,
        events.router,
        health.router,
        knowledge.router,
        observability.router,
        web.router,
    ):
        app.include_router(router)
    return app
