"""Where conversation turns and rate-limit buckets live: Redis, shared by every gateway
replica, or this process alone when no Redis is configured (local use, with a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import redis.asyncio as redis
from pydantic import BaseModel, TypeAdapter
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff

from tertulia.common.logging import protect
from tertulia.gateway.errors import MemoryUnavailable
from tertulia.gateway.pipeline.prompt import estimate_tokens

Role = Literal["user", "assistant"]


class Turn(BaseModel):
    role: Role
    content: str


_TURNS = TypeAdapter(list[Turn])


def parse_turns(items: list[str]) -> list[Turn]:
    """Stored turns, validated in one pass rather than one call per turn."""
    return _TURNS.validate_json("[" + ",".join(items) + "]") if items else []


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


@dataclass(frozen=True)
class Admission:
    """What a chat request learns from the store before it is answered, in one round trip:
    whether its buckets let it through, and the conversation's newest turns within a budget."""

    verdict: BucketVerdict
    history: list[Turn]


class Store(Protocol):
    async def history(self, key: str) -> list[Turn]: ...

    async def admit(
        self, buckets: list[Bucket], key: str | None, budget_tokens: int
    ) -> Admission: ...

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None: ...

    async def clear(self, key: str) -> bool: ...

    async def claim(self, claims: str, event: str, ttl_seconds: int, cap: int) -> bool: ...

    async def take(self, buckets: list[Bucket]) -> BucketVerdict: ...

    async def share_load(self, member: str, load: int, ttl_seconds: float) -> tuple[int, bool]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


# What Redis may evict, and what it must not. Conversations are a cache: each key carries its
# TTL, and under memory pressure Redis (maxmemory-policy volatile-lru, as the operator runs it)
# drops the least recently used. Rate-limit buckets and event claims are promises: a bucket
# evicted is a limit reset, a claim evicted is an event answered twice. So they live in keys
# without a TTL, which volatile-* policies never evict, and expire by the scripts' own clean-up:
# all buckets in one hash (field: the bucket, value: "tokens at"), indexed by the moment each
# is full again, after which it is the same as absent; each API key's claims in a sorted set
# of its own scored by their expiry. Keys that never expire must never grow without bound, or
# Redis at its memory limit would evict conversations to make room for them: a key's claims
# are capped (the soonest to expire go first) and rate limited, and expire within the hour.
RATE_KEY = "tertulia:rate"
RATE_INDEX_KEY = "tertulia:rate:full"
CLAIMS_PREFIX = "tertulia:events"
# Buckets removed per request at most, once full again: more than requests add, so the hash
# holds only the buckets in use.
_RATE_CLEANUP = 16

# One chat request's reads and takes, in one round trip.
#
# The buckets: one token from every bucket, or from none (a request refused by the per-key
# bucket must not drain the user's). Redis runs the script atomically, with its own clock, so
# every gateway replica sees one bucket.
#
# The history: the newest turns whose estimated tokens (prompt.estimate_tokens: a quarter of
# the characters, rounded up, plus one) fit the budget, walking back from the newest, so a long
# conversation costs a request what its prompt can hold, not what it has stored. A refused
# request reads nothing.
#
# KEYS: the buckets' hash and index, then the conversation when there is one; ARGV: the
# number of buckets, each bucket's field, rate and capacity, then the budget in tokens.
_ADMIT_SCRIPT = r"""
local buckets = tonumber(ARGV[1])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local full = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, @CLEANUP@)
if #full > 0 then
  redis.call('HDEL', KEYS[1], unpack(full))
  redis.call('ZREM', KEYS[2], unpack(full))
end
local levels = {}
for i = 1, buckets do
  local rate = tonumber(ARGV[3 * i])
  local capacity = tonumber(ARGV[3 * i + 1])
  local tokens, at = capacity, now
  local state = redis.call('HGET', KEYS[1], ARGV[3 * i - 1])
  if state then
    local space = string.find(state, ' ', 1, true)
    tokens = tonumber(string.sub(state, 1, space - 1))
    at = tonumber(string.sub(state, space + 1))
  end
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then
    return {0, tostring((1 - tokens) / rate), i}
  end
  levels[i] = tokens
end
for i = 1, buckets do
  local field = ARGV[3 * i - 1]
  local rate = tonumber(ARGV[3 * i])
  local capacity = tonumber(ARGV[3 * i + 1])
  local left = levels[i] - 1
  redis.call('HSET', KEYS[1], field, string.format('%.17g %.17g', left, now))
  redis.call('ZADD', KEYS[2], now + (capacity - left) / rate, field)
end
local reply = {1, '0', 0}
local conversation = KEYS[3]
if conversation then
  local budget = tonumber(ARGV[3 * buckets + 2])
  local used = 0
  local items = redis.call('LRANGE', conversation, 0, -1)
  local kept = {}
  for index = #items, 1, -1 do
    local item = items[index]
    local text = cjson.decode(item)['content']
    -- Characters, as Python counts them: UTF-8 bytes less continuation bytes.
    local characters = #text - select(2, string.gsub(text, '[\128-\191]', ''))
    used = used + math.ceil(characters / 4) + 1
    if used > budget then
      break
    end
    kept[#kept + 1] = item
  end
  for i = #kept, 1, -1 do
    reply[#reply + 1] = kept[i]
  end
end
return reply
""".replace("@CLEANUP@", str(_RATE_CLEANUP))

# The first claim of an event within its window: expired claims go first, all at once (a
# sorted set removes a range in one step), and past the cap the claims soonest to expire.
# KEYS: the key's claims; ARGV: the event, the window in seconds, the cap.
_CLAIM_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  redis.call('ZPOPMIN', KEYS[1], over)
end
return 1
"""

# A conversation's new turns, its length bounded and its time to live renewed, atomically.
# KEYS: the conversation; ARGV: the most messages kept, the TTL, then the turns.
_APPEND_SCRIPT = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# The autoscaler's view of the load (autoscale.py): each gateway's requests in flight or
# waiting, one field per gateway in a hash, with the moment it goes stale in a sorted set (a
# gateway that died stops counting within the TTL); and which gateway leads, the one that holds
# the lock key. One round trip: this gateway's count in, the total and whether it leads out.
# KEYS: the loads, their expiries, the lock; ARGV: this gateway, its load, the TTL in seconds.
LOAD_KEY = "tertulia:load"
LOAD_INDEX_KEY = "tertulia:load:fresh"
LEADER_KEY = "tertulia:autoscaler"
_LOAD_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
  redis.call('ZREM', KEYS[2], unpack(stale))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local total = 0
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  total = total + tonumber(value)
end
local ttl = math.ceil(tonumber(ARGV[3]) * 1000)
local leads = 0
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ttl) then
  leads = 1
elseif redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[3], ttl)
  leads = 1
end
return {total, leads}
"""


T = TypeVar("T")


def transient(error: Exception) -> bool:
    """Whether another attempt may succeed: a connection that broke or timed out may, a wrong
    password, a missing permission or a certificate that does not verify will not (redis-py
    counts them as connection errors too, and retries them)."""
    if isinstance(error, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return False
    cause = error.__cause__ or error.__context__
    # A TLS handshake refused (wrong CA, a plain-text port); a TLS session cut short is transient.
    closed = ssl.SSLEOFError | ssl.SSLZeroReturnError
    return not (isinstance(cause, ssl.SSLError) and not isinstance(cause, closed))


class TransientRetry(Retry):
    """redis-py's retry with backoff, for transient errors only: a misconfigured Redis fails
    the request at once instead of after seconds of attempts."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            return transient(error) and (is_retryable is None or is_retryable(error))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


# Connections to Redis per gateway process. A chat request holds one for its one round trip
# before the model and one after, so a few dozen serve hundreds of streams at once.
REDIS_CONNECTIONS = 64


SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelAddress:
    """Redis behind Sentinels, as a redis+sentinel://HOST:PORT[,HOST:PORT...]/NAME[/DB] URL
    spells it: the Sentinels to ask, the name they know the primary by, the database."""

    sentinels: list[tuple[str, int]]
    name: str
    db: int

    @classmethod
    def parse(cls, url: str) -> SentinelAddress:
        hosts, _, path = url.removeprefix(SENTINEL_SCHEME).partition("/")
        name, _, db = path.partition("/")
        sentinels = []
        for address in hosts.split(","):
            host, _, port = address.rpartition(":")
            sentinels.append((host.strip("[]"), int(port)))  # [::1] is ::1
        return cls(sentinels, name, int(db or 0))


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the server the Sentinels name the primary, asked again each time it
    connects. redis-py asks only on its first connect: a command sent again after an error
    (a READONLY from a primary turned replica by a switchover, a pod gone) reconnects to the
    server it reached before (redis/redis-py#3874), and every attempt fails the same way."""

    _addressed = False  # connect_to has just set the address

    async def connect_to(self, address: tuple[str, int]) -> None:
        self._addressed = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._addressed = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and not self._addressed and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Connections to whichever server the Sentinels name the primary, a burst waiting for
    one as with a single Redis."""


class RedisStore:
    """Memory, limits and event claims in Redis. An outage is a 503 with Retry-After, never
    a 500, and a turn is answered only once it is stored."""

    def __init__(self, url: str, password: str | None = None, ca_file: Path | None = None) -> None:
        # TLS (a rediss:// URL), verified against `ca_file` or the system's CAs.
        tls = {"ssl_ca_certs": str(ca_file)} if ca_file is not None else {}
        options: dict[str, Any] = {
            "password": password,
            "decode_responses": True,
            "health_check_interval": 30,
            # A Redis that is gone fails at once; one that hangs, within seconds.
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # A connection that broke (Redis restarted, its pod replaced, a replica promoted)
            # is opened again and the command sent again, with redis-py's own defaults, which a
            # pool built by hand does not get: without them the first request after a restart
            # fails. Errors that another attempt cannot fix (a wrong password, an unverified
            # certificate) fail at once.
            "retry": TransientRetry(ExponentialWithJitterBackoff(cap=1.0, base=0.01), retries=10),
            # A burst larger than the pool waits for a connection (one round trip each, so not
            # for long) rather than failing as if Redis were down.
            "max_connections": REDIS_CONNECTIONS,
            "timeout": 5,
        }
        self._sentinel: Sentinel | None = None
        if url.startswith(SENTINEL_SCHEME):
            # The primary is whichever server the Sentinels name: asked again whenever a
            # connection breaks or the server it reaches says it is now a replica.
            address = SentinelAddress.parse(url)
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it bare
                address.sentinels,
                sentinel_kwargs={
                    "password": password,
                    "socket_connect_timeout": 2,
                    "socket_timeout": 2,
                },
            )
            self._redis = self._sentinel.master_for(
                address.name,
                connection_pool_class=_BlockingSentinelPool,
                connection_class=_SentinelConnection,
                db=address.db,
                **options,
            )
        else:
            pool = redis.BlockingConnectionPool.from_url(url, **options, **tls)
            self._redis = redis.Redis.from_pool(pool)  # closing the client closes its pool
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)
        self._append = self._redis.register_script(_APPEND_SCRIPT)
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._load = self._redis.register_script(_LOAD_SCRIPT)

    async def history(self, key: str) -> list[Turn]:
        with _unavailable():
            items = await self._redis.lrange(key, 0, -1)
        return parse_turns(cast(list[str], items))  # decode_responses: str

    async def admit(self, buckets: list[Bucket], key: str | None, budget_tokens: int) -> Admission:
        arguments: list[float | str] = [len(buckets)]
        for bucket in buckets:
            arguments += [bucket.key, bucket.rate_per_second, bucket.capacity]
        keys = [RATE_KEY, RATE_INDEX_KEY]
        if key is not None:
            keys.append(key)
            arguments.append(budget_tokens)
        with _unavailable():
            allowed, retry_after, refused, *items = await self._admit(keys=keys, args=arguments)
        scope = buckets[int(refused) - 1].scope if int(refused) else ""
        return Admission(
            BucketVerdict(bool(allowed), float(retry_after), scope),
            parse_turns(items),
        )

    async def append(
        self, key: str, turns: list[Turn], max_messages: int, ttl_seconds: int
    ) -> None:
        with _unavailable():
            await self._append(
                keys=[key],
                args=[max_messages, ttl_seconds, *(turn.model_dump_json() for turn in turns)],
            )

    async def clear(self, key: str) -> bool:
        with _unavailable():
            return bool(await self._redis.delete(key))

    async def claim(self, claims: str, event: str, ttl_seconds: int, cap: int) -> bool:
        """True for the first claim of `event` within `ttl_seconds`, False for the others;
        `claims` (one API key's) keeps at most `cap` of them."""
        with _unavailable():
            return bool(await self._claim(keys=[claims], args=[event, ttl_seconds, cap]))

    async def take(self, buckets: list[Bucket]) -> BucketVerdict:
        return (await self.admit(buckets, None, 0)).verdict

    async def share_load(self, member: str, load: int, ttl_seconds: float) -> tuple[int, bool]:
        """Report this gateway's load; the total of every live gateway's, and whether this
        one leads the autoscaling (it holds the lock, renewed by each report)."""
        with _unavailable():
            total, leads = await self._load(
                keys=[LOAD_KEY, LOAD_INDEX_KEY, LEADER_KEY], args=[member, load, ttl_seconds]
            )
        return int(total), bool(leads)

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


class InProcessStore:
    """The same behaviour within one process; nothing is shared or kept across restarts."""

    def __init__(self) -> None:
        self._conversations: dict[str, tuple[float, list[str]]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._claims: dict[str, dict[str, float]] = {}
        self._lock = asyncio.Lock()

    async def history(self, key: str) -> list[Turn]:
        expires, items = self._conversations.get(key, (math.inf, []))
        if expires < time.monotonic():
            self._conversations.pop(key, None)
            return []
        return parse_turns(items)

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

    async def claim(self, claims: str, event: str, ttl_seconds: int, cap: int) -> bool:
        now = time.monotonic()
        held = self._claims.setdefault(claims, {})
        # Expired claims go as new ones arrive, so the map stays the size of one window.
        for stale in [k for k, expires in held.items() if expires <= now]:
            del held[stale]
        if event in held:
            return False
        held[event] = now + ttl_seconds
        if len(held) > cap:
            for soonest in sorted(held, key=held.__getitem__)[: len(held) - cap]:
                del held[soonest]
        return True

    async def admit(self, buckets: list[Bucket], key: str | None, budget_tokens: int) -> Admission:
        verdict = await self.take(buckets)
        if not verdict.allowed or key is None:
            return Admission(verdict, [])
        kept: list[Turn] = []
        used = 0
        for turn in reversed(await self.history(key)):
            used += estimate_tokens(turn.content)
            if used > budget_tokens:
                break
            kept.append(turn)
        return Admission(verdict, kept[::-1])

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

    async def share_load(self, member: str, load: int, ttl_seconds: float) -> tuple[int, bool]:
        # One process: its own load is all of it, and it leads.
        return load, True

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


def open_store(
    redis_url: str | None, password_file: Path | None = None, ca_file: Path | None = None
) -> Store:
    """Redis at `redis_url` (with the password in `password_file`, and over TLS for a
    rediss:// URL, trusting `ca_file`; for a redis+sentinel:// URL, the primary its Sentinels
    name, with the same password for them), else this process."""
    if not redis_url:
        return InProcessStore()
    password = protect(password_file.read_text().strip()) if password_file else None
    return RedisStore(redis_url, password, ca_file)


def hashed_key(prefix: str, *parts: str) -> str:
    """A Redis key for `parts`: unambiguous whatever they hold, and no user id in clear."""
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]
    return f"{prefix}:{digest}"
