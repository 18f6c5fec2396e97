"""The Redis store against the real Redis, side by side with the in-process store it stands in
for: what a chat request reads and takes in its one round trip, and what it writes after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from tertulia.gateway.pipeline.prompt import estimate_tokens
from tertulia.gateway.store import (
    CLAIMS_PREFIX,
    LEADER_KEY,
    LOAD_INDEX_KEY,
    LOAD_KEY,
    RATE_INDEX_KEY,
    RATE_KEY,
    Bucket,
    InProcessStore,
    RedisStore,
    Store,
    Turn,
)
from tertulia.operator.render.memory import EVICTION_POLICY
from tests.testbed.servers import start_redis

# One API key's claims.
CLAIMS = f"{CLAIMS_PREFIX}:test"


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


async def test_a_full_memory_evicts_old_conversations_never_limits_or_claims(
    tmp_path: Path,
) -> None:
    """Redis capped and evicting as the operator runs it: filled three times over with
    conversations, it drops many of them (least recently used first), while a user's empty
    bucket still refuses and a claimed event is still claimed (a limit reset or an event
    answered twice otherwise)."""
    cap = 8 * 2**20
    process, url = start_redis(
        tmp_path / "redis",
        options=["--maxmemory", str(cap), "--maxmemory-policy", EVICTION_POLICY],
    )
    store = RedisStore(url)
    client = redis.Redis.from_url(url)
    try:
        bucket = Bucket(key(), "user", rate_per_second=1 / 3600, capacity=1)
        assert (await store.admit([bucket], None, 0)).verdict.allowed
        assert not (await store.admit([bucket], None, 0)).verdict.allowed
        assert await store.claim(CLAIMS, "event-1", 900, 100)
        reply = "r" * 10_000
        conversations = [key() for _ in range(3 * cap // len(reply))]
        for conversation in conversations:
            turns = [Turn(role="user", content="q"), Turn(role="assistant", content=reply)]
            await store.append(conversation, turns, 40, 3600)

        info = await client.info("stats")
        assert info["evicted_keys"] > len(conversations) // 2
        assert len(await store.history(conversations[-1])) == 2
        assert not (await store.admit([bucket], None, 0)).verdict.allowed
        assert not await store.claim(CLAIMS, "event-1", 900, 100)
    finally:
        await store.aclose()
        await client.aclose()
        process.stop()


async def test_buckets_full_again_and_expired_claims_are_cleared(redis_url: str) -> None:
    """Kept without a TTL, they are removed by the requests that follow once they no longer
    matter: a bucket full again is the same as none, an expired claim the same as none."""
    store = RedisStore(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        await client.delete(RATE_KEY, RATE_INDEX_KEY, CLAIMS)
        # Full again half a second after their one request.
        buckets = [Bucket(key(), "user", rate_per_second=2.0, capacity=1) for _ in range(40)]
        for bucket in buckets:
            assert (await store.admit([bucket], None, 0)).verdict.allowed
        assert await store.claim(CLAIMS, "event-old", 1, 100)
        assert await client.hlen(RATE_KEY) == 40
        # Neither has a TTL: a volatile-* policy never evicts them.
        assert await client.ttl(RATE_KEY) == await client.ttl(CLAIMS) == -1
        await asyncio.sleep(1.1)

        for _ in range(3):
            await store.admit([], None, 0)
        assert await store.claim(CLAIMS, "event-new", 60, 100)

        assert await client.hlen(RATE_KEY) == 0
        assert await client.zcard(RATE_INDEX_KEY) == 0
        assert await client.zrange(CLAIMS, 0, -1) == [b"event-new"]
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_restarted_redis_is_used_again_without_a_failed_request(tmp_path: Path) -> None:
    """A Redis pod replaced closes the gateway's pooled connections: the next request opens
    new ones rather than failing with 503."""
    process, url = start_redis(tmp_path / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    store = RedisStore(url)
    try:
        conversation = key()
        await fill(store, conversation, ["hello"])
        process.stop()
        process, _ = start_redis(tmp_path / "redis", port=port)

        admission = await store.admit([], conversation, budget_tokens=100)

        assert admission.verdict.allowed
        assert admission.history == []  # this Redis keeps nothing: a new one
    finally:
        await store.aclose()
        process.stop()


async def test_gateways_share_their_load_and_one_leads_until_it_stops_reporting(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    await client.delete(LOAD_KEY, LOAD_INDEX_KEY, LEADER_KEY)
    first, second = RedisStore(redis_url), RedisStore(redis_url)
    try:
        assert await first.share_load("gateway-a", 3, ttl_seconds=1) == (3, True)
        # The second gateway sees both loads and does not lead while the first reports.
        assert await second.share_load("gateway-b", 4, ttl_seconds=1) == (7, False)
        assert await first.share_load("gateway-a", 1, ttl_seconds=1) == (5, True)
        for _ in range(3):
            await asyncio.sleep(0.4)
            total, leads = await second.share_load("gateway-b", 4, ttl_seconds=1)
        # The first stopped reporting (its pod went away): its load no longer counts, and
        # the second took the lead.
        assert (total, leads) == (4, True)
        assert await client.hkeys(LOAD_KEY) == [b"gateway-b"]
    finally:
        await first.aclose()
        await second.aclose()
        await client.aclose()
