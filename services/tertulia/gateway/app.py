"""The gateway's FastAPI app, built by a factory; the lifespan opens and closes its clients."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI

from tertulia.gateway.drain import Drain
from tertulia.gateway.errors import install_error_handlers
from tertulia.gateway.fastlane import FastLane, post_route
from tertulia.gateway.gate import Gate
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
    fast_lane: bool = True,
) -> FastAPI:
    """The app; `retriever` plugs in the knowledge base. Without `fast_lane` every request
    goes through FastAPI's own dispatch (the same answers, slower: see fastlane.py)."""
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

    docs: dict[str, Any] = {}
    if not settings.api_docs:
        docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        **docs,
        title="Tertulia gateway",
        version=version("tertulia"),
        description="Chat with this cluster's private assistant: an OpenAI-compatible API and "
        "a simple chat API with memory and sources.",
        lifespan=lifespan,
    )
    # Metrics exist before the lifespan so the middleware, built at start-up, can hold them.
    app.state.metrics = GatewayMetrics.create()
    # Started by the server on SIGTERM (serving.py); /readyz and the middleware read it.
    app.state.drain = Drain()
    if fast_lane:  # added first, so it runs inside the gate
        app.add_middleware(
            FastLane,
            routes=[
                post_route(chat.router, "/chat"),
                post_route(chat.router, "/chat/stream"),
                post_route(completions.router, "/v1/chat/completions"),
            ],
        )
    # Who is calling, before anything reads the body; inside the request context, so a
    # refusal is counted and logged like any answer.
    app.add_middleware(Gate)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, drain=app.state.drain)
    install_error_handlers(app)
    routers = [
        chat.router,
        completions.router,
        conversations.router,
        events.router,
        health.router,
        knowledge.router,
        web.router,
    ]
    if settings.metrics_port is None:
        routers.append(observability.router)
    for router in routers:
        app.include_router(router)
    return app


def create_metrics_app(app: FastAPI) -> FastAPI:
    """/metrics and /stats of `app`, for its metrics port: the same figures, on a port no
    Ingress exposes. It shares the app's state, and so its services, once they are open."""
    metrics_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    metrics_app.state = app.state
    metrics_app.include_router(observability.router)
    return metrics_app
