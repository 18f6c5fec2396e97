"""Where conversation turns and rate-limit buckets live: Redis, shared by every gateway
replica, or this process alone when no Redis is configured (local use, with a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import redis.asyncio as redis
from pydantic import BaseModel
from redis import exceptions as redis_errors

from tertulia.gateway.errors import MemoryUnavailable

Role = Literal["user", "assistant"]


class Turn(BaseModel):
    role: Role
    content: str


@dataclass(frozen=True)
class BucketVerdict:
    allowed: bool
    # Seconds until the request would be allowed; 0 when it was.
    retry_after: float
    # The scope of the first bucket that refused: "user" or "key".
    scope: str = ""


@dataclass(frozen=True)
class Bucket:
    key: str
    scope: str
    rate_per_second: float
    capacity: int


class Store(Protocol):
    async def history(self, key: str) -> list[Turn]: ...

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None: ...

    async def clear(self, key: str) -> bool: ...

    async def claim(self, key: str, ttl_seconds: int) -> bool: ...

    async def take(self, buckets: list[Bucket]) -> BucketVerdict: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


# Takes one token from every bucket, or from none: a request refused by the per-key bucket
# must not drain the user's. Redis runs the script atomically, with its own clock, so every
# gateway replica sees one bucket. KEYS: the buckets; ARGV: rate and capacity per bucket.
_TAKE_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local levels = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then
    return {0, tostring((1 - tokens) / rate), i}
  end
  levels[i] = tokens
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', levels[i] - 1, 'at', now)
  redis.call('EXPIRE', key, math.ceil(capacity / rate) + 1)
end
return {1, '0', 0}
"""


class RedisStore:
    """Memory, limits and event claims in Redis. An outage is a 503 with Retry-After, never
    a 500, and a turn is answered only once it is stored."""

    def __init__(self, url: str, password: str | None = None) -> None:
        self._redis = redis.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            health_check_interval=30,
            # A Redis that is gone fails at once; one that hangs, within seconds.
            socket_connect_timeout=2,
            socket_timeout=5,
        )
        self._take = self._redis.register_script(_TAKE_SCRIPT)

    async def history(self, key: str) -> list[Turn]:
        with _unavailable():
            items = await self._redis.lrange(key, 0, -1)
        return [Turn.model_validate_json(item) for item in items]

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None:
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(turn.model_dump_json() for turn in turns))
                pipe.ltrim(key, -max_messages, -1)
                pipe.expire(key, ttl_seconds)
                await pipe.execute()

    async def clear(self, key: str) -> bool:
        with _unavailable():
            return bool(await self._redis.delete(key))

    async def claim(self, key: str, ttl_seconds: int) -> bool:
        """True for the first claim of `key` within `ttl_seconds`, False for the others."""
        with _unavailable():
            return bool(await self._redis.set(key, "1", nx=True, ex=ttl_seconds))

    async def take(self, buckets: list[Bucket]) -> BucketVerdict:
        arguments: list[float] = []
        for bucket in buckets:
            arguments += [bucket.rate_per_second, bucket.capacity]
        with _unavailable():
            allowed, retry_after, refused = await self._take(
                keys=[bucket.key for bucket in buckets], args=arguments
            )
        scope = buckets[int(refused) - 1].scope if int(refused) else ""
        return BucketVerdict(bool(allowed), float(retry_after), scope)

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()


class InProcessStore:
    """The same behaviour within one process; nothing is shared or kept across restarts."""

    def __init__(self) -> None:
        self._conversations: dict[str, tuple[float, list[str]]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._claims: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def history(self, key: str) -> list[Turn]:
        expires, items = self._conversations.get(key, (math.inf, []))
        if expires < time.monotonic():
            self._conversations.pop(key, None)
            return []
        return [Turn.model_validate_json(item) for item in items]

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None:
        async with self._lock:
            items = [turn.model_dump_json() for turn in await self.history(key)]
            items += [turn.model_dump_json() for turn in turns]
            kept = items[-max_messages:] if max_messages else []
            self._conversations[key] = (time.monotonic() + ttl_seconds, kept)

    async def clear(self, key: str) -> bool:
        return self._conversations.pop(key, None) is not None

    async def claim(self, key: str, ttl_seconds: int) -> bool:
        now = time.monotonic()
        # Expired claims go as new ones arrive, so the map stays the size of one window.
        for stale in [k for k, expires in self._claims.items() if expires <= now]:
            del self._claims[stale]
        if key in self._claims:
            return False
        self._claims[key] = now + ttl_seconds
        return True

    async def take(self, buckets: list[Bucket]) -> BucketVerdict:
        async with self._lock:
            now = time.monotonic()
            levels = []
            for bucket in buckets:
                tokens, at = self._buckets.get(bucket.key, (bucket.capacity, now))
                tokens = min(bucket.capacity, tokens + (now - at) * bucket.rate_per_second)
                if tokens < 1:
                    return BucketVerdict(False, (1 - tokens) / bucket.rate_per_second, bucket.scope)
                levels.append(tokens)
            for bucket, tokens in zip(buckets, levels, strict=True):
                self._buckets[bucket.key] = (tokens - 1, now)
            return BucketVerdict(True, 0.0)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# How long a client is told to wait while Redis is away: a restart takes about this long.
MEMORY_RETRY_AFTER_SECONDS = 5.0


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Redis's errors as the gateway's: memory is unavailable, try again shortly."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
        raise MemoryUnavailable(
            f"conversation memory cannot be reached ({type(error).__name__}); try again shortly",
            retry_after=MEMORY_RETRY_AFTER_SECONDS,
        ) from None


def open_store(redis_url: str | None, password_file: Path | None = None) -> Store:
    """Redis at `redis_url` (with the password in `password_file`), else this process."""
    if not redis_url:
        return InProcessStore()
    password = password_file.read_text().strip() if password_file else None
    return RedisStore(redis_url, password)


def hashed_key(prefix: str, *parts: str) -> str:
    """A Redis key for `parts`: unambiguous whatever they hold, and no user id in clear."""
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]
    return f"{prefix}:{digest}"
