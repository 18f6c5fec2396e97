"""A conversation's history, and its reset; only its owner (API key and user) sees it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.errors import ConversationNotFound
from tertulia.gateway.pipeline.auth import acting_user
from tertulia.gateway.pipeline.memory import conversation_key
from tertulia.gateway.schemas import CONVERSATION_ID_PATTERN, Conversation, ErrorBody

router = APIRouter(prefix="/conversations", tags=["conversations"])

ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID_PATTERN)]
User = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="The user; defaults to the key's identity."),
]
_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}


@router.get("/{conversation_id}", responses=_NOT_FOUND)
async def get_conversation(
    conversation_id: ConversationId, identity: IdentityDep, services: ServicesDep, user: User = None
) -> Conversation:
    acting = acting_user(identity, user, services.settings.user_prefixes)
    key = conversation_key(identity, acting, conversation_id)
    turns = await services.store.history(key)
    if not turns:
        # The same answer for someone else's conversation: its existence is not disclosed.
        raise ConversationNotFound(f"no conversation {conversation_id!r} for this user")
    return Conversation(conversation_id=conversation_id, turns=turns)


@router.delete("/{conversation_id}", status_code=204, responses=_NOT_FOUND)
async def delete_conversation(
    conversation_id: ConversationId, identity: IdentityDep, services: ServicesDep, user: User = None
) -> Response:
    """Forget the conversation: the next message starts afresh."""
    acting = acting_user(identity, user, services.settings.user_prefixes)
    key = conversation_key(identity, acting, conversation_id)
    if not await services.store.clear(key):
        raise ConversationNotFound(f"no conversation {conversation_id!r} for this user")
    return Response(status_code=204)
