"""The chat pipeline in order: limit, check, moderate, remember, retrieve, assemble, generate.

`prepare` runs every step that can refuse the request, so a refusal is an HTTP status; the
answer then comes whole (`answer`) or as server-sent events (`stream_events`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi.sse import format_sse_event

from tertulia.common.logging import content
from tertulia.gateway.backend import BackendStream
from tertulia.gateway.errors import GatewayError, MemoryUnavailable
from tertulia.gateway.pipeline import outage
from tertulia.gateway.pipeline.auth import Identity, acting_user
from tertulia.gateway.pipeline.checks import check_text
from tertulia.gateway.pipeline.memory import (
    conversation_key,
    fit_history,
    remember,
    remembered,
)
from tertulia.gateway.pipeline.prompt import assemble
from tertulia.gateway.pipeline.ratelimit import limited_buckets, refuse_over_limit
from tertulia.gateway.pipeline.retrieval import Passage, retrieve
from tertulia.gateway.schemas import ChatRequest, ChatResponse, Source, Usage
from tertulia.gateway.services import Services

logger = logging.getLogger(__name__)

CONTENT_FILTER = "content_filter"


@dataclass
class PreparedChat:
    conversation_id: str
    key: str
    message: str
    messages: list[dict[str, str]]
    passages: list[Passage]
    temperature: float
    started: float
    # Set when the store was away: the answer says so, and the turn is not saved.
    notice: str | None = None

    @property
    def sources(self) -> list[Source]:
        return [
            Source(source=p.source, title=p.title, section=p.section, score=p.score, text=p.text)
            for p in self.passages
        ]

    def backend_body(self, max_tokens: int) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens,
        }


async def prepare(services: Services, identity: Identity, request: ChatRequest) -> PreparedChat:
    started = time.monotonic()
    settings = services.settings
    user = acting_user(identity, request.user, settings.user_prefixes)
    known = (
        conversation_key(identity, user, request.conversation_id)
        if request.conversation_id
        else None
    )
    # The rate limit and the conversation's history in one round trip to the store.
    admission, notice = await outage.admit(
        services.store,
        services.outage,
        settings,
        services.metrics,
        limited_buckets(settings.rate_limit, identity, user),
        remembered(settings.memory, known),
    )
    refuse_over_limit(admission.verdict, services.metrics)
    check_text("message", request.message, settings.limits.max_message_chars, required=True)
    if request.context is not None:
        check_text("context", request.context, settings.limits.max_context_chars)
    await services.moderator.check_input(request.message, request.context or "")
    conversation_id = request.conversation_id or uuid.uuid4().hex
    key = known or conversation_key(identity, user, conversation_id)
    history = fit_history(admission.history, settings.memory.max_tokens)
    passages = await retrieve(
        services.retriever,
        services.metrics,
        request.message,
        settings.knowledge_base.top_k,
        request.filters,
    )
    passages = services.moderator.allowed_passages(passages)
    logger.info(
        "chat prepared",
        extra={
            "identity": identity.name,
            "history_turns": len(history),
            "passages": len(passages),
            "message_text": content(request.message),
        },
    )
    return PreparedChat(
        conversation_id=conversation_id,
        key=key,
        message=request.message,
        messages=assemble(
            settings.system_prompt,
            history,
            request.message,
            passages=passages,
            context=request.context,
        ),
        passages=passages,
        temperature=settings.temperature if request.temperature is None else request.temperature,
        started=started,
        notice=notice,
    )


async def answer(services: Services, prepared: PreparedChat) -> ChatResponse:
    result = await services.backend.complete(
        prepared.backend_body(services.settings.max_tokens), key=prepared.key
    )
    services.metrics.first_token_seconds.observe(time.monotonic() - prepared.started)
    choice = (result.get("choices") or [{}])[0]
    reply = str((choice.get("message") or {}).get("content") or "")
    finish_reason = str(choice.get("finish_reason") or "stop")
    if not await services.moderator.output_allowed(reply):
        reply, finish_reason = services.moderator.refusal, CONTENT_FILTER
    usage = Usage.model_validate(result["usage"]) if result.get("usage") else None
    count_tokens(services, usage)
    notice = await save_turn(services, prepared, reply, refuse=True)
    return ChatResponse(
        response=reply,
        conversation_id=prepared.conversation_id,
        sources=prepared.sources,
        finish_reason=finish_reason,
        usage=usage,
        notice=notice,
    )


async def save_turn(
    services: Services, prepared: PreparedChat, reply: str, *, refuse: bool
) -> str | None:
    """Remember the turn, unless the store was away when the request came; the notice the
    answer carries. A store that fails now raises (with `refuse`, for a whole answer and
    `memory.when_unavailable: refuse`) or the answer says the turn was not remembered."""
    if prepared.notice is not None:
        return prepared.notice
    settings = services.settings
    try:
        await remember(services.store, settings.memory, prepared.key, prepared.message, reply)
    except MemoryUnavailable as error:
        services.outage.failed(error.message)
        if refuse and settings.memory.when_unavailable == "refuse":
            raise
        services.metrics.degraded.labels("memory").inc()
        return outage.MEMORY_NOTICE
    return None


def sse(event: str, data: dict[str, Any]) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False))


async def stream_events(
    services: Services, prepared: PreparedChat, stream: BackendStream
) -> AsyncIterator[bytes]:
    """`meta` (conversation id, sources), `token`s, then `done` with the whole reply, or `error`."""
    meta: dict[str, Any] = {
        "conversation_id": prepared.conversation_id,
        "sources": [source.model_dump() for source in prepared.sources],
    }
    if prepared.notice is not None:
        meta["notice"] = prepared.notice
    yield sse("meta", meta)
    parts: list[str] = []
    tokens = 0
    finish_reason = "stop"
    usage: Usage | None = None
    scanner = services.moderator.scanner()
    try:
        async with aclosing(stream.events()) as events:
            async for event in events:
                if event.done:
                    break
                delta = event.text()
                if delta:
                    if not tokens:
                        services.metrics.first_token_seconds.observe(
                            time.monotonic() - prepared.started
                        )
                    tokens += 1
                    released = scanner.feed(delta)
                    if released is None:
                        finish_reason = CONTENT_FILTER
                        break
                    if released:
                        parts.append(released)
                        yield sse("token", {"text": released})
                finish_reason = event.finish_reason() or finish_reason
                if event.usage():
                    usage = Usage.model_validate(event.usage())
        if finish_reason != CONTENT_FILTER:
            rest = scanner.finish()
            if rest is None:
                finish_reason = CONTENT_FILTER
            elif rest:
                parts.append(rest)
                yield sse("token", {"text": rest})
    except GatewayError as error:
        logger.warning("stream failed", extra={"code": error.code, "reason": error.message})
        yield sse("error", error.body()["error"])
        return
    finally:
        await stream.aclose()
    if finish_reason == CONTENT_FILTER:
        services.moderator.count_output_block()
    reply = services.moderator.refusal if finish_reason == CONTENT_FILTER else "".join(parts)
    # llama.cpp does not report usage in streams; there each chunk carries one token.
    count_tokens(services, usage or Usage(completion_tokens=tokens))
    # The user has the answer: a memory failure now must not take it back.
    done: dict[str, Any] = {
        "conversation_id": prepared.conversation_id,
        "response": reply,
        "finish_reason": finish_reason,
        "usage": usage.model_dump() if usage else None,
    }
    try:
        notice = await save_turn(services, prepared, reply, refuse=False)
    except Exception as error:
        logger.error("could not save the turn", extra={"error": type(error).__name__})
        notice = outage.MEMORY_NOTICE
    if notice is not None:
        done["notice"] = notice
    yield sse("done", done)


def count_tokens(services: Services, usage: Usage | None) -> None:
    if usage is not None:
        services.metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
        services.metrics.tokens.labels("completion").inc(usage.completion_tokens)
