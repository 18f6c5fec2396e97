"""The knowledge store's client after a failure: rebuilt once, however many requests find
it broken at the same moment."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

import pytest

from tertulia.knowledge import store
from tertulia.knowledge.settings import KnowledgeSettings


class FakeClient:
    made: ClassVar[list[FakeClient]] = []

    def __init__(self) -> None:
        self.connected = False
        self.closed = False
        self.collections = self
        FakeClient.made.append(self)

    def use(self, name: str) -> Any:
        return name

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        await asyncio.sleep(0.01)  # a real connect yields: others run meanwhile
        self.connected = True

    async def close(self) -> None:
        await asyncio.sleep(0.01)
        self.closed = True


def test_requests_failing_together_rebuild_one_client_and_close_the_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClient.made.clear()
    monkeypatch.setattr(store.Store, "_new_client", lambda self: FakeClient())

    async def run() -> store.Store:
        knowledge = store.Store(KnowledgeSettings())
        await knowledge._connect()
        knowledge._stale = True  # what a failed request leaves behind
        await asyncio.gather(*(knowledge._connect() for _ in range(20)))
        return knowledge

    knowledge = asyncio.run(run())
    first, second = FakeClient.made  # no third client, leaking its channels
    assert first.closed and not second.closed
    assert knowledge._client is cast(Any, second) and second.connected
