"""Rate limit: a token bucket per user and one per API key, taken together and atomically."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tertulia.gateway.errors import RateLimited
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline import outage
from tertulia.gateway.pipeline.auth import Identity
from tertulia.gateway.settings import GatewaySettings, RateLimitSettings
from tertulia.gateway.store import Bucket, BucketVerdict, Store, hashed_key

if TYPE_CHECKING:
    from tertulia.gateway.services import Services


def buckets_for(settings: RateLimitSettings, identity: Identity, user: str) -> list[Bucket]:
    return [
        Bucket(
            hashed_key("tertulia:rate:user", identity.name, user),
            "user",
            settings.requests_per_minute / 60,
            settings.burst,
        ),
        Bucket(
            hashed_key("tertulia:rate:key", identity.name),
            "key",
            settings.key_requests_per_minute / 60,
            settings.key_burst,
        ),
    ]


async def enforce_rate_limit(
    store: Store,
    store_outage: outage.StoreOutage,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    identity: Identity,
    user: str,
) -> None:
    """Take one request from the user's and the key's buckets, or raise 429 with Retry-After
    (while the store is away: as `rate_limit.when_unavailable` says)."""
    if not settings.rate_limit.enabled:
        return
    buckets = buckets_for(settings.rate_limit, identity, user)
    refuse_over_limit(await outage.take(store, store_outage, settings, metrics, buckets), metrics)


def limited_buckets(settings: RateLimitSettings, identity: Identity, user: str) -> list[Bucket]:
    """The buckets a request takes from: none when rate limiting is off."""
    return buckets_for(settings, identity, user) if settings.enabled else []


def refuse_over_limit(verdict: BucketVerdict, metrics: GatewayMetrics) -> None:
    """Raise 429 with Retry-After when the buckets refused the request."""
    if verdict.allowed:
        return
    metrics.rate_limited.labels(verdict.scope).inc()
    whose = "this user" if verdict.scope == "user" else "this API key"
    raise RateLimited(
        f"too many requests for {whose}; retry in {verdict.retry_after:.1f} s",
        retry_after=verdict.retry_after,
    )


async def claim_budget(services: Services, identity: Identity) -> None:
    """Take one event claim from the API key's bucket for claims, or raise 429 with
    Retry-After. Unlike chat requests this is never waived: claims are stored in keys Redis
    does not evict, so their rate is part of what bounds Redis's memory."""
    settings = services.settings.events
    bucket = Bucket(
        hashed_key("tertulia:rate:events", identity.name),
        "key",
        settings.claims_per_minute / 60,
        settings.burst,
    )
    refuse_over_limit(await services.store.take([bucket]), services.metrics)
