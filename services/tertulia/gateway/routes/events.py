"""Platform events claimed once: a bot asks before answering an event the platform may deliver
again (Slack's retries, a reconnect), so an answer is given once however many bot replicas or
restarts see it. Bots keep no store of their own; the gateway's (Redis) is shared by all.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.schemas import ErrorBody
from tertulia.gateway.store import hashed_key

router = APIRouter(prefix="/events", tags=["events"])


class EventClaim(BaseModel):
    id: str = Field(
        min_length=1,
        max_length=256,
        description="The platform's id of the event, prefixed by the platform (slack:Ev123).",
    )
    ttl_seconds: int = Field(
        900, ge=1, le=86_400, description="How long the claim stands: the redelivery window."
    )


class ClaimResult(BaseModel):
    first: bool = Field(description="Whether this was the first claim of the event.")


@router.post("", responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}})
async def claim_event(
    claim: EventClaim, identity: IdentityDep, services: ServicesDep
) -> ClaimResult:
    """Claim an event: `first` is true for one claim per id within the window, false for
    the rest. Claims are per API key: one key's claims never answer for another's."""
    key = hashed_key("tertulia:event", identity.name, claim.id)
    return ClaimResult(first=await services.store.claim(key, claim.ttl_seconds))
