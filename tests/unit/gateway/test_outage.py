"""The gateway while its store (Redis) is away: each feature as configured, the notice the
answer carries, /readyz, and the pause that spares each request the client's retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tertulia.gateway.app import create_app
from tertulia.gateway.errors import MemoryUnavailable
from tertulia.gateway.pipeline.outage import MEMORY_NOTICE
from tertulia.gateway.settings import GatewaySettings
from tertulia.gateway.store import Admission, Bucket, BucketVerdict, InProcessStore, Turn
from tests.unit.gateway.conftest import parse_sse


class FlakyStore(InProcessStore):
    """The in-process store, which fails as Redis's client does when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.down_on_append = False
        self.calls = 0

    def _fail(self, now: bool) -> None:
        self.calls += 1
        if now:
            raise MemoryUnavailable("conversation memory cannot be reached", retry_after=5)

    async def admit(self, buckets: list[Bucket], key: str | None, budget_tokens: int) -> Admission:
        self._fail(self.down)
        return await super().admit(buckets, key, budget_tokens)

    async def take(self, buckets: list[Bucket]) -> BucketVerdict:
        self._fail(self.down)
        return await super().take(buckets)

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None:
        self._fail(self.down or self.down_on_append)
        await super().append(key, turns, max_messages, ttl_seconds)

    async def ping(self) -> None:
        self._fail(self.down)


Gateway = tuple[httpx.AsyncClient, FlakyStore, FastAPI]


@pytest.fixture
async def gateway(fake_url: str) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    async with AsyncExitStack() as stack:

        async def build(**settings: Any) -> Gateway:
            app = create_app(GatewaySettings(backend={"url": fake_url, "retries": 0}, **settings))
            await stack.enter_async_context(app.router.lifespan_context(app))
            store = FlakyStore()
            app.state.services.store = store
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
            )
            return client, store, app

        yield build


def chat(message: str) -> dict[str, str]:
    return {"message": message, "conversation_id": "c1", "user": "ana"}


async def test_without_redis_the_answer_comes_without_history_and_says_so(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    client, store, app = await gateway()
    first = await client.post("/chat", json=chat("first"))
    assert first.json()["notice"] is None
    store.down = True

    answered = await client.post("/chat", json=chat("second"))
    streamed = parse_sse((await client.post("/chat/stream", json=chat("third"))).text)
    openai = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    readiness = await client.get("/readyz")
    metrics = (await client.get("/metrics")).text

    assert answered.status_code == 200
    assert answered.json()["response"] == "You said: second"
    assert answered.json()["notice"] == MEMORY_NOTICE
    assert streamed[0] == (
        "meta",
        {"conversation_id": "c1", "sources": [], "notice": MEMORY_NOTICE},
    )
    assert streamed[-1][0] == "done"
    assert streamed[-1][1]["notice"] == MEMORY_NOTICE
    assert openai.status_code == 200  # the rate limit fails open
    assert readiness.status_code == 200
    assert readiness.json()["status"] == "degraded"
    assert readiness.json()["checks"]["store"]["without"] == {
        "memory": "answering without history",
        "rate_limit": "not enforced",
    }
    assert 'tertulia_gateway_degraded_total{feature="memory"} 2.0' in metrics
    assert 'tertulia_gateway_degraded_total{feature="rate_limit"} 3.0' in metrics

    # Back: the conversation holds the turns from before and after, not those without it.
    store.down = False
    app.state.services.outage.until = 0.0  # past the pause after the last failure
    await client.post("/chat", json=chat("fourth"))
    history = (await client.get("/conversations/c1", params={"user": "ana"})).json()["turns"]
    assert [turn["content"] for turn in history if turn["role"] == "user"] == ["first", "fourth"]


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"memory": {"when_unavailable": "refuse"}}, {"/chat"}),
        ({"rate_limit": {"when_unavailable": "refuse"}}, {"/chat", "/v1/chat/completions"}),
    ],
    ids=["memory-refuses", "rate-limit-fails-closed"],
)
async def test_a_feature_set_to_refuse_answers_503_with_retry_after(
    gateway: Callable[..., Awaitable[Gateway]], settings: dict[str, Any], refused: set[str]
) -> None:
    client, store, _ = await gateway(**settings)
    store.down = True
    bodies = {
        "/chat": chat("hello"),
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    }
    for path, body in bodies.items():
        response = await client.post(path, json=body)
        if path in refused:
            assert response.status_code == 503, path
            assert response.headers["retry-after"]
            assert response.json()["error"]["code"] == "memory_unavailable"
        else:
            assert response.status_code == 200, path
    readiness = await client.get("/readyz")
    assert (readiness.status_code, readiness.json()["status"]) == (503, "unavailable")


async def test_a_turn_that_cannot_be_saved_is_answered_and_says_it_was_not_remembered(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    client, store, _ = await gateway()
    store.down_on_append = True
    answered = await client.post("/chat", json=chat("hello"))
    assert answered.status_code == 200
    assert answered.json()["notice"] == MEMORY_NOTICE

    refusing, store, _ = await gateway(memory={"when_unavailable": "refuse"})
    store.down_on_append = True
    assert (await refusing.post("/chat", json=chat("hello"))).status_code == 503


async def test_after_a_failure_requests_skip_the_store_for_a_moment_then_try_it_again(
    gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    client, store, app = await gateway()
    store.down = True
    await client.post("/chat", json=chat("one"))
    calls = store.calls
    for _ in range(5):
        assert (await client.post("/chat", json=chat("more"))).json()["notice"] == MEMORY_NOTICE
    assert store.calls == calls  # paused: no request waited on the store

    store.down = False
    app.state.services.outage.until = 0.0  # the pause is over
    again = await client.post("/chat", json=chat("back"))
    assert again.json()["notice"] is None
    assert store.calls > calls
