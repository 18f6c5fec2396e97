"""Dropping redelivered events: Slack retries an event it thinks was not acknowledged in
time, and a reconnecting client may see an event twice."""

from __future__ import annotations

import time
from collections import OrderedDict

from redis.asyncio import Redis

# How long an event id is remembered; Slack's last retry comes within about 5 minutes.
WINDOW_SECONDS = 15 * 60
_LOCAL_LIMIT = 10_000


class Deduplicator:
    """`first_delivery` is True once per event id: in Redis, shared by every replica and
    surviving restarts, or in this process when no Redis is configured."""

    def __init__(self, redis: Redis | None, *, window_seconds: int = WINDOW_SECONDS) -> None:
        self.redis = redis
        self.window_seconds = window_seconds
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        key = f"tertulia:bot:event:{platform}:{event_id}"
        if self.redis is not None:
            return bool(await self.redis.set(key, b"1", nx=True, ex=self.window_seconds))
        now = time.monotonic()
        while self._seen and (
            len(self._seen) >= _LOCAL_LIMIT
            or next(iter(self._seen.values())) < now - self.window_seconds
        ):
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
