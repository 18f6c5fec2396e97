"""Platform events claimed once: a bot asks before answering an event the platform may deliver
again (Slack's retries, a reconnect), so an answer is given once however many bot replicas or
restarts see it. Bots keep no store of their own; the gateway's (Redis) is shared by all.

Claims are kept in keys Redis never evicts, so they are bounded: rate limited per API key,
within the hour, and capped per key (`events` settings), so no flood of event ids can fill
Redis and crowd out the conversations.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.pipeline.ratelimit import claim_budget
from tertulia.gateway.schemas import ErrorBody
from tertulia.gateway.store import CLAIMS_PREFIX, hashed_key

router = APIRouter(prefix="/events", tags=["events"])

# The longest a claim stands: redeliveries come within minutes (Slack's last retry within
# about 5), and a claim kept longer only holds memory.
MAX_CLAIM_SECONDS = 3600


class EventClaim(BaseModel):
    id: str = Field(
        min_length=1,
        max_length=256,
        description="The platform's id of the event, prefixed by the platform (slack:Ev123).",
    )
    ttl_seconds: int = Field(
        900,
        ge=1,
        le=MAX_CLAIM_SECONDS,
        description="How long the claim stands: the redelivery window, an hour at most.",
    )


class ClaimResult(BaseModel):
    first: bool = Field(description="Whether this was the first claim of the event.")


@router.post(
    "",
    responses={code: {"model": ErrorBody} for code in (401, 422, 429, 503)},
)
async def claim_event(
    claim: EventClaim, identity: IdentityDep, services: ServicesDep
) -> ClaimResult:
    """Claim an event: `first` is true for one claim per id within the window, false for
    the rest. Claims are per API key: one key's claims never answer for another's."""
    await claim_budget(services, identity)
    first = await services.store.claim(
        hashed_key(CLAIMS_PREFIX, identity.name),
        hashed_key("event", claim.id).removeprefix("event:"),
        claim.ttl_seconds,
        services.settings.events.max_claims_per_key,
    )
    return ClaimResult(first=first)
