"""Parsing runs off the event loop: a slow document does not stall what else the loop
serves (in the gateway, every streaming answer)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tertulia.knowledge import ingest
from tertulia.knowledge.documents import Document, UnreadableDocument
from tertulia.knowledge.ingest import Ingestor, Input, Report
from tertulia.knowledge.settings import KnowledgeSettings


class NoEmbeddings:
    batch_size = 8


def test_a_slow_parse_leaves_the_loop_free(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    def slow_parse(source: str, data: bytes, kind: str) -> Document:
        time.sleep(0.5)  # what pypdf does with a large PDF: CPU, no await
        order.append("parsed")
        raise UnreadableDocument("stop here: only the parse is under test")

    monkeypatch.setattr(ingest, "parse", slow_parse)
    ingestor = Ingestor(KnowledgeSettings(), store=Any, embedder=NoEmbeddings())

    async def heartbeat() -> None:
        await asyncio.sleep(0.05)
        order.append("heartbeat")

    async def run() -> str:
        beat = asyncio.create_task(heartbeat())
        outcome = await ingestor._one(
            Input("big.pdf", b"%PDF", "pdf"), None, "model", Report(), ingest._Silent()
        )
        await beat
        return outcome

    assert asyncio.run(run()) == "failed"
    assert order == ["heartbeat", "parsed"]
