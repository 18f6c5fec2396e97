"""Retrieval: passages from the knowledge base for the message, returned as sources.

A knowledge base that fails does not fail the chat: the answer comes without context, the
failure is logged and counted, and /readyz reports the knowledge base degraded.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from tertulia.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from tertulia.knowledge.results import SearchFilters
    from tertulia.knowledge.settings import KnowledgeSettings

logger = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE_SECONDS = 15.0


class Passage(BaseModel):
    text: str
    source: str
    title: str = ""
    section: str = ""
    score: float = 0.0


class Retriever(Protocol):
    async def search(
        self, query: str, top_k: int, filters: SearchFilters | None = None
    ) -> list[Passage]: ...

    async def ping(self) -> None: ...

    async def describe(self) -> KnowledgeBaseSummary: ...

    async def aclose(self) -> None: ...


class KnowledgeBaseSummary(BaseModel):
    """What the web chat says of the knowledge base it talks to."""

    name: str
    passages: int
    headings: list[tuple[str, str]]


async def retrieve(
    retriever: Retriever | None,
    metrics: GatewayMetrics,
    query: str,
    top_k: int,
    filters: SearchFilters | None = None,
) -> list[Passage]:
    if retriever is None:
        return []
    try:
        return await retriever.search(query, top_k, filters)
    except Exception as error:  # any failure of the KB must leave the chat working
        logger.warning(
            "knowledge base search failed; answering without context", extra={"error": str(error)}
        )
        metrics.backend_errors.labels("knowledge_base").inc()
        return []


class WeaviateRetriever:
    """Hybrid search in the ChatBot's Weaviate collection. When the embeddings server fails,
    the search goes on with BM25 alone rather than without context. After Weaviate fails,
    messages skip the knowledge base for a while instead of each waiting out the timeout;
    a successful readiness check ends the pause early."""

    def __init__(self, settings: KnowledgeSettings) -> None:
        from tertulia.knowledge.embeddings import Embedder
        from tertulia.knowledge.store import Store

        self.settings = settings
        self.store = Store(settings)
        self.embedder = Embedder(settings.embedding)
        self._paused_until = 0.0

    async def search(
        self, query: str, top_k: int, filters: SearchFilters | None = None
    ) -> list[Passage]:
        from tertulia.knowledge.results import StoreError
        from tertulia.knowledge.store import find

        wait = self._paused_until - time.monotonic()
        if wait > 0:
            raise StoreError(f"skipped: the knowledge base failed; next try in {wait:.0f} s")
        try:
            hits = await find(
                self.store,
                self.embedder,
                query,
                limit=top_k,
                alpha=self.settings.alpha,
                filters=filters,
                bm25_when_embedding_fails=True,
            )
        except StoreError:
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
            raise
        return [
            Passage(
                text=hit.text,
                source=hit.source,
                title=hit.title,
                section=hit.section,
                score=hit.score,
            )
            for hit in hits
        ]

    async def ping(self) -> None:
        await self.store.ready()
        self._paused_until = 0.0

    async def describe(self) -> KnowledgeBaseSummary:
        return KnowledgeBaseSummary(
            name=self.store.name,
            passages=await self.store.count(),
            headings=await self.store.headings(),
        )

    async def aclose(self) -> None:
        await self.embedder.aclose()
        await self.store.aclose()
