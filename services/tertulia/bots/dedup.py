"""Dropping redelivered events: Slack retries an event it thinks was not acknowledged in
time, and a reconnecting client may see an event twice."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from tertulia.common.gateway_client import GatewayError

# How long an event id is remembered; Slack's last retry comes within about 5 minutes.
WINDOW_SECONDS = 15 * 60
_LOCAL_LIMIT = 10_000


class EventClaims(Protocol):
    async def claim_event(self, event_id: str, ttl_seconds: int) -> bool: ...


class Deduplicator:
    """`first_delivery` is True once per event id. The gateway keeps the claims, shared by
    every replica and surviving restarts (bots reach nothing else); this process remembers
    them too, so a claim the gateway could not take does not let a redelivery through."""

    def __init__(self, claims: EventClaims | None, *, window_seconds: int = WINDOW_SECONDS) -> None:
        self.claims = claims
        self.window_seconds = window_seconds
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def first_delivery(self, platform: str, event_id: str) -> bool:
        key = f"{platform}:{event_id}"
        if not self._first_here(key):
            # Never claim again what this process has claimed: a redelivery's claim can reach
            # the gateway before the first delivery's, and then neither would be answered.
            return False
        if self.claims is None:
            return True
        try:
            return await self.claims.claim_event(key, self.window_seconds)
        except GatewayError:
            # The gateway cannot say; the answer itself will report the outage.
            return True

    def _first_here(self, key: str) -> bool:
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
