"""The knowledge store's client after a failure: rebuilt once, however many requests find
it broken at the same moment; a search on a channel whose node went away, or that was closed
beneath it, tried once more."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

import pytest
from weaviate.exceptions import WeaviateBaseError

from tertulia.knowledge import store
from tertulia.knowledge.results import Hit, StoreError
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


class Answer:
    objects: ClassVar[list[Any]] = []


class NodeClient(FakeClient):
    """A client whose channel reached a Weaviate node: one that has gone away (`gone`)
    fails every search."""

    gone: ClassVar[set[int]] = set()
    # Clients whose channel is closed while a search is on it: gRPC cancels the call.
    closed_beneath: ClassVar[set[int]] = set()

    def __init__(self) -> None:
        super().__init__()
        self.index = len(FakeClient.made) - 1
        self.query = self
        self.searches = 0

    def use(self, name: str) -> Any:
        return self

    async def bm25(self, **_: Any) -> Answer:
        self.searches += 1
        if self.index in NodeClient.gone:
            raise WeaviateBaseError("failed to connect to all addresses")
        if self.index in NodeClient.closed_beneath:
            raise asyncio.CancelledError()  # as grpc.aio's call does
        return Answer()


def search(knowledge: store.Store) -> list[Hit]:
    return asyncio.run(knowledge.search("tides", None, limit=3, alpha=0.0))


def test_a_search_on_a_channel_to_a_node_gone_is_tried_once_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClient.made.clear()
    monkeypatch.setattr(store.Store, "_new_client", lambda self: NodeClient())
    knowledge = store.Store(KnowledgeSettings())
    assert search(knowledge) == []  # connects the first client
    NodeClient.gone = {0}
    assert search(knowledge) == []  # its node went away: answered on a second client
    first, second = cast(list[NodeClient], FakeClient.made)
    assert (first.searches, second.searches) == (2, 1)


def test_a_search_failing_on_a_new_connection_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClient.made.clear()
    NodeClient.gone = {0, 1}
    monkeypatch.setattr(store.Store, "_new_client", lambda self: NodeClient())
    knowledge = store.Store(KnowledgeSettings())
    with pytest.raises(StoreError, match="failed to connect"):
        search(knowledge)
    assert [client.searches for client in cast(list[NodeClient], FakeClient.made)] == [1]


def test_a_search_whose_channel_is_closed_beneath_it_fails_as_a_search_not_a_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClient.made.clear()
    NodeClient.gone = set()
    monkeypatch.setattr(store.Store, "_new_client", lambda self: NodeClient())
    knowledge = store.Store(KnowledgeSettings())
    assert search(knowledge) == []
    NodeClient.closed_beneath = {0}
    # Answered on a new client: the chat keeps its context.
    assert search(knowledge) == []
    first, second = cast(list[NodeClient], FakeClient.made)
    assert (first.searches, second.searches) == (2, 1)
    # A new client whose channel is closed too: a StoreError, which the chat answers
    # without context, not a CancelledError, which would fail the request.
    NodeClient.closed_beneath = {1, 2}
    with pytest.raises(StoreError, match="was closed"):
        search(knowledge)
    NodeClient.closed_beneath = set()


def test_a_search_cancelled_by_its_caller_stays_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClient.made.clear()
    NodeClient.gone = set()

    class SlowClient(NodeClient):
        async def bm25(self, **_: Any) -> Answer:
            await asyncio.sleep(10)
            return Answer()

    monkeypatch.setattr(store.Store, "_new_client", lambda self: SlowClient())
    knowledge = store.Store(KnowledgeSettings())

    async def run() -> None:
        task = asyncio.create_task(knowledge.search("tides", None, limit=3, alpha=0.0))
        await asyncio.sleep(0.1)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
