"""The Redis store against the real Redis, side by side with the in-process store it stands in
for: what a chat request reads and takes in its one round trip, and what it writes after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from tertulia.gateway.pipeline.prompt import estimate_tokens
from tertulia.gateway.store import Bucket, InProcessStore, RedisStore, Store, Turn


@pytest.fixture(params=["redis", "in-process"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    chosen: Store = RedisStore(redis_url) if request.param == "redis" else InProcessStore()
    yield chosen
    await chosen.aclose()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def fill(store: Store, conversation: str, texts: list[str]) -> None:
    for number, text in enumerate(texts):
        role = "user" if number % 2 == 0 else "assistant"
        await store.append(conversation, [Turn(role=role, content=text)], 100, 60)


async def test_admit_reads_the_newest_turns_within_the_token_budget(store: Store) -> None:
    conversation = key()
    # Twelve characters each: four tokens by the gateway's estimate.
    await fill(store, conversation, [f"turn {n:02d} text" for n in range(10)])
    admission = await store.admit([], conversation, budget_tokens=4 * 3)
    assert admission.verdict.allowed
    assert [turn.content for turn in admission.history] == [
        "turn 07 text",
        "turn 08 text",
        "turn 09 text",
    ]
    whole = await store.admit([], conversation, budget_tokens=10_000)
    assert [turn.content for turn in whole.history] == [f"turn {n:02d} text" for n in range(10)]


async def test_the_budget_counts_characters_not_bytes(store: Store) -> None:
    """Accents and emoji take two to four bytes in UTF-8; the budget counts them as Python
    does, one character each, so Redis and the prompt agree on what fits."""
    conversation = key()
    texts = ["né à Málaga", "😀 " * 6, "plain text!!"]
    await fill(store, conversation, texts)
    budget = sum(estimate_tokens(text) for text in texts[1:])
    admission = await store.admit([], conversation, budget_tokens=budget)
    assert [turn.content for turn in admission.history] == texts[1:]
    budget += estimate_tokens(texts[0])
    admission = await store.admit([], conversation, budget_tokens=budget)
    assert [turn.content for turn in admission.history] == texts


async def test_a_refused_request_reads_nothing_and_takes_nothing(store: Store) -> None:
    conversation = key()
    await fill(store, conversation, ["hello"])
    user = Bucket(key(), "user", rate_per_second=0.001, capacity=3)
    api_key = Bucket(key(), "key", rate_per_second=0.001, capacity=1)
    first = await store.admit([user, api_key], conversation, budget_tokens=100)
    assert first.verdict.allowed
    assert [turn.content for turn in first.history] == ["hello"]
    refused = await store.admit([user, api_key], conversation, budget_tokens=100)
    assert not refused.verdict.allowed
    assert refused.verdict.scope == "key"
    assert refused.verdict.retry_after > 0
    assert refused.history == []
    # The user's bucket gave one token (the first request), not two: two more pass.
    other_key = Bucket(key(), "key", rate_per_second=0.001, capacity=5)
    assert (await store.admit([user, other_key], None, 0)).verdict.allowed
    assert (await store.admit([user, other_key], None, 0)).verdict.allowed
    assert not (await store.admit([user, other_key], None, 0)).verdict.allowed


async def test_append_keeps_the_newest_messages_and_renews_the_ttl(redis_url: str) -> None:
    store = RedisStore(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        conversation = key()
        for number in range(4):
            await store.append(
                conversation,
                [Turn(role="user", content=f"m{number}"), Turn(role="assistant", content="r")],
                max_messages=4,
                ttl_seconds=100 + number,
            )
        assert [turn.content for turn in await store.history(conversation)] == [
            "m2",
            "r",
            "m3",
            "r",
        ]
        assert 100 < await client.ttl(conversation) <= 103
    finally:
        await store.aclose()
        await client.aclose()


async def test_more_concurrent_requests_than_connections_wait_for_one(redis_url: str) -> None:
    """A burst larger than the connection pool queues for a connection: every request is
    admitted, none is turned away as if Redis were down."""
    store = RedisStore(redis_url)
    try:
        conversation = key()
        await fill(store, conversation, ["hello"])
        bucket = Bucket(key(), "user", rate_per_second=1.0, capacity=10_000)
        admissions = await asyncio.gather(
            *(store.admit([bucket], conversation, budget_tokens=100) for _ in range(500))
        )
        assert all(admission.verdict.allowed for admission in admissions)
        assert all(
            [turn.content for turn in admission.history] == ["hello"] for admission in admissions
        )
    finally:
        await store.aclose()
