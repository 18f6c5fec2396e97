"""The in-process store behaves as the Redis one: trimmed histories, all-or-nothing buckets;
the Redis store retries what another attempt can fix, and only that."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff

from tertulia.gateway.store import Bucket, InProcessStore, TransientRetry, Turn


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


def _attempts(error: Exception) -> int:
    """How many times the Redis store's retry policy calls an operation that raises `error`."""
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise error

    async def ignore(_error: Exception) -> None:
        return None

    retry = TransientRetry(NoBackoff(), retries=3)
    with pytest.raises(type(error)):
        asyncio.run(retry.call_with_retry(operation, ignore))
    return calls


def _wrapped(cause: OSError) -> redis_errors.ConnectionError:
    """A connection error as redis-py raises it while connecting: inside an `except` of `cause`."""
    try:
        try:
            raise cause
        except OSError:
            raise redis_errors.ConnectionError("Error connecting") from None
    except redis_errors.ConnectionError as raised:
        return raised


def test_a_broken_connection_is_tried_again() -> None:
    assert _attempts(redis_errors.ConnectionError("Connection reset by peer")) == 4
    assert _attempts(redis_errors.TimeoutError("Timeout reading")) == 4
    assert _attempts(_wrapped(ssl.SSLEOFError("EOF occurred in violation of protocol"))) == 4


def test_a_wrong_password_or_certificate_fails_at_once() -> None:
    assert _attempts(redis_errors.AuthenticationError("WRONGPASS invalid password")) == 1
    assert _attempts(redis_errors.AuthorizationError("NOPERM")) == 1
    assert _attempts(_wrapped(ssl.SSLCertVerificationError("certificate verify failed"))) == 1
    assert _attempts(_wrapped(ssl.SSLError("wrong version number"))) == 1
