"""Retrieval: passages from the knowledge base for the message, returned as sources.

A knowledge base that fails does not fail the chat: the answer comes without context, the
failure is logged and counted, and /readyz reports the knowledge base degraded.
"""

from __future__ import annotations

import logging
from typing import Protocol

from pydantic import BaseModel

from tertulia.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class Passage(BaseModel):
    text: str
    source: str
    title: str = ""
    section: str = ""
    score: float = 0.0


class Retriever(Protocol):
    async def search(self, query: str, top_k: int) -> list[Passage]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


async def retrieve(
    retriever: Retriever | None, metrics: GatewayMetrics, query: str, top_k: int
) -> list[Passage]:
    if retriever is None:
        return []
    try:
        return await retriever.search(query, top_k)
    except Exception as error:  # any failure of the KB must leave the chat working
        logger.warning(
            "knowledge base search failed; answering without context", extra={"error": str(error)}
        )
        metrics.backend_errors.labels("knowledge_base").inc()
        return []
