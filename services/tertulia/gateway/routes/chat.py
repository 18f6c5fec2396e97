"""The simple chat API the bots and the web chat use: POST /chat and POST /chat/stream."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tertulia.gateway.backend import UpstreamEventSource
from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.pipeline import chat
from tertulia.gateway.schemas import ERROR_RESPONSES, ChatRequest, ChatResponse

router = APIRouter(tags=["chat"])


@router.post("/chat", responses=ERROR_RESPONSES)
async def post_chat(
    request: ChatRequest, identity: IdentityDep, services: ServicesDep
) -> ChatResponse:
    """Answer one message, remembering the conversation."""
    prepared = await chat.prepare(services, identity, request)
    return await chat.answer(services, prepared)


@router.post(
    "/chat/stream",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}, **ERROR_RESPONSES},
)
async def post_chat_stream(
    request: ChatRequest, identity: IdentityDep, services: ServicesDep
) -> UpstreamEventSource:
    """The same as server-sent events: `meta`, then `token`s, then `done` (or `error`)."""
    prepared = await chat.prepare(services, identity, request)
    stream = await services.backend.open_stream(
        prepared.backend_body(services.settings.max_tokens), key=prepared.key
    )
    return UpstreamEventSource(chat.stream_events(services, prepared, stream), stream)
