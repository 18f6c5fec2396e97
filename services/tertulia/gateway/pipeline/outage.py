"""What each feature does while the store (Redis) cannot be reached, as configured.

Memory (`memory.when_unavailable`): `answer` without the conversation's history, with a
notice, and without remembering the turn; or `refuse` (503, Retry-After). The rate limit
(`rate_limit.when_unavailable`): `allow` requests unlimited (fail open) or `refuse` them (fail
closed). Event claims (the bots' de-duplication) always answer 503: the bots then rely on
what their own process has seen, so a redelivery to the same bot is still dropped.

Once the store has failed, requests skip it for a moment (`PAUSE_SECONDS`) rather than each
waiting out the Redis client's retries; the first request after that tries it again, so
everything recovers by itself when Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tertulia.gateway.errors import MemoryUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import GatewaySettings
from tertulia.gateway.store import Admission, Bucket, BucketVerdict, Store

MEMORY_NOTICE = (
    "Conversation memory is unavailable for a moment: this answer does not know what was said "
    "before, and this turn will not be remembered."
)
T = TypeVar("T")
logger = logging.getLogger(__name__)
# How long requests skip a store that has just failed.
PAUSE_SECONDS = 2.0


class StoreOutage:
    """The store's recent failures, shared by the requests of one gateway process."""

    def __init__(self) -> None:
        self.until = 0.0

    def paused(self) -> bool:
        return time.monotonic() < self.until

    def failed(self, reason: str) -> None:
        """The store failed (`reason`): said in the log, and skipped for a moment."""
        logger.warning(
            "the store failed: requests do without it for a moment",
            extra={"reason": reason, "seconds": PAUSE_SECONDS},
        )
        self.until = time.monotonic() + PAUSE_SECONDS


def tolerated(settings: GatewaySettings, *, limited: bool) -> bool:
    """Whether a request (`limited`: rate limited) may be answered without the store: no
    feature it uses is set to refuse."""
    if limited and settings.rate_limit.when_unavailable == "refuse":
        return False
    return not (settings.memory.max_turns and settings.memory.when_unavailable == "refuse")


def degraded_features(settings: GatewaySettings) -> dict[str, str]:
    """What the gateway does without its store, per feature that uses it: for /readyz."""
    features = {}
    if settings.memory.max_turns:
        features["memory"] = (
            "answering without history"
            if settings.memory.when_unavailable == "answer"
            else "refusing (503)"
        )
    if settings.rate_limit.enabled:
        features["rate_limit"] = (
            "not enforced" if settings.rate_limit.when_unavailable == "allow" else "refusing (503)"
        )
    return features


async def _unless_away(
    outage: StoreOutage, refuse: bool, call: Callable[[], Awaitable[T]]
) -> T | None:
    """`call`'s result, or None while the store is away (it failed a moment ago, or fails
    now) and the caller can do without it; with `refuse`, MemoryUnavailable instead."""
    if not outage.paused():
        try:
            return await call()
        except MemoryUnavailable as error:
            outage.failed(error.message)
            if refuse:
                raise
    elif refuse:
        raise MemoryUnavailable(
            "conversation memory cannot be reached; try again shortly", retry_after=PAUSE_SECONDS
        )
    return None


async def admit(
    store: Store,
    outage: StoreOutage,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    buckets: list[Bucket],
    key: str | None,
) -> tuple[Admission, str | None]:
    """The store's admission (rate limit and history), or, while the store is away and every
    feature used tolerates it, one without either and the notice the answer carries."""
    refuse = not tolerated(settings, limited=bool(buckets))
    found = await _unless_away(
        outage, refuse, lambda: store.admit(buckets, key, settings.memory.max_tokens)
    )
    if found is not None:
        return found, None
    if buckets:
        metrics.degraded.labels("rate_limit").inc()
    notice = None
    if settings.memory.max_turns:
        metrics.degraded.labels("memory").inc()
        notice = MEMORY_NOTICE
    return Admission(BucketVerdict(True, 0.0), []), notice


async def take(
    store: Store,
    outage: StoreOutage,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    buckets: list[Bucket],
) -> BucketVerdict:
    """The rate limit's verdict, or, while the store is away and the limit fails open, a pass."""
    refuse = settings.rate_limit.when_unavailable == "refuse"
    verdict = await _unless_away(outage, refuse, lambda: store.take(buckets))
    if verdict is not None:
        return verdict
    metrics.degraded.labels("rate_limit").inc()
    return BucketVerdict(True, 0.0)
