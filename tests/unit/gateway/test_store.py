"""The in-process store behaves as the Redis one: trimmed histories, all-or-nothing buckets."""

from __future__ import annotations

from tertulia.gateway.store import Bucket, InProcessStore, Turn


async def test_append_keeps_only_the_newest_messages() -> None:
    store = InProcessStore()
    for index in range(5):
        await store.append(
            "k", [Turn(role="user", content=str(index))], max_messages=3, ttl_seconds=60
        )
    assert [turn.content for turn in await store.history("k")] == ["2", "3", "4"]


async def test_clear_reports_whether_there_was_anything() -> None:
    store = InProcessStore()
    await store.append("k", [Turn(role="user", content="x")], max_messages=3, ttl_seconds=60)
    assert await store.clear("k")
    assert not await store.clear("k")
    assert await store.history("k") == []


async def test_bucket_allows_the_burst_then_refuses_with_the_wait() -> None:
    store = InProcessStore()
    bucket = Bucket("user", "user", rate_per_second=1.0, capacity=2)
    assert (await store.take([bucket])).allowed
    assert (await store.take([bucket])).allowed
    refused = await store.take([bucket])
    assert not refused.allowed
    assert refused.scope == "user"
    assert 0 < refused.retry_after <= 1.0


async def test_a_refusal_by_one_bucket_takes_nothing_from_the_others() -> None:
    store = InProcessStore()
    user = Bucket("user", "user", rate_per_second=0.001, capacity=5)
    key = Bucket("key", "key", rate_per_second=0.001, capacity=1)
    assert (await store.take([user, key])).allowed
    refused = await store.take([user, key])
    assert refused.scope == "key"
    other_key = Bucket("key2", "key", rate_per_second=0.001, capacity=5)
    # The user's bucket lost one token (the allowed request), not two.
    for _ in range(4):
        assert (await store.take([user, other_key])).allowed
    assert not (await store.take([user, other_key])).allowed


async def test_a_conversation_past_its_ttl_is_forgotten() -> None:
    store = InProcessStore()
    await store.append("k", [Turn(role="user", content="x")], max_messages=2, ttl_seconds=0)
    assert await store.history("k") == []
