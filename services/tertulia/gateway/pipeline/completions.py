"""The OpenAI-compatible path: the client sends the whole conversation, so memory is not used;
limits, checks, moderation, the system prompt and retrieval apply as on the simple API, and
the backend's stream is passed through event by event.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tertulia.gateway.backend import BackendStream
from tertulia.gateway.errors import GatewayError, InvalidInput, PayloadTooLarge
from tertulia.gateway.pipeline.auth import Identity, acting_user
from tertulia.gateway.pipeline.chat import CONTENT_FILTER, count_tokens
from tertulia.gateway.pipeline.checks import check_text
from tertulia.gateway.pipeline.prompt import system_message, with_passages
from tertulia.gateway.pipeline.ratelimit import enforce_rate_limit
from tertulia.gateway.pipeline.retrieval import retrieve
from tertulia.gateway.schemas import OpenAIChatRequest, Usage
from tertulia.gateway.services import Services


async def prepare_completion(
    services: Services, identity: Identity, request: OpenAIChatRequest
) -> dict[str, Any]:
    """The body to send upstream, after every step that can refuse the request."""
    settings = services.settings
    await enforce_rate_limit(
        services.store,
        services.outage,
        settings,
        services.metrics,
        identity,
        acting_user(identity, request.user, settings.user_prefixes),
    )
    limit = settings.limits.max_messages
    if len(request.messages) > limit:
        raise PayloadTooLarge(f"messages has {len(request.messages)} entries; the limit is {limit}")
    user_messages = [m for m in request.messages if m.role == "user"]
    if not user_messages:
        raise InvalidInput("messages holds no message with role 'user'")
    for index, message in enumerate(request.messages):
        limit = settings.limits.max_message_chars
        if message.role in ("system", "developer"):
            limit = settings.limits.max_context_chars + settings.limits.max_message_chars
        check_text(f"messages[{index}].content", message.text(), limit)
    # Every message is the model's to read, the client's system and assistant turns too.
    await services.moderator.check_input(*(message.text() for message in request.messages))

    passages = await retrieve(
        services.retriever,
        services.metrics,
        user_messages[-1].text(),
        settings.knowledge_base.top_k,
    )
    passages = services.moderator.allowed_passages(passages)
    body = request.model_dump(
        exclude_none=True, exclude={"model", "stream", "stream_options", "max_completion_tokens"}
    )
    messages = body["messages"]
    for message in messages:
        # OpenAI's newer name for the system role, which not every engine knows (llama.cpp's
        # Python server refuses it with a 500).
        if message["role"] == "developer":
            message["role"] = "system"
    # The passages lead the last user message, as on the simple API.
    if passages:
        last = max(i for i, message in enumerate(request.messages) if message.role == "user")
        messages[last]["content"] = with_passages(request.messages[last].text(), passages)
    # The assistant's own system prompt leads; a client's system messages follow it as context.
    messages.insert(0, {"role": "system", "content": system_message(settings.system_prompt, None)})
    body.setdefault("temperature", settings.temperature)
    asked = request.max_completion_tokens or request.max_tokens or settings.max_tokens
    body["max_tokens"] = min(asked, settings.max_tokens)
    return body


async def moderated_completion(services: Services, result: dict[str, Any]) -> dict[str, Any]:
    for choice in result.get("choices", []):
        message = choice.get("message") or {}
        if not await services.moderator.output_allowed(str(message.get("content") or "")):
            message["content"] = services.moderator.refusal
            choice["finish_reason"] = CONTENT_FILTER
    if result.get("usage"):
        count_tokens(services, Usage.model_validate(result["usage"]))
    return result


async def passthrough(
    services: Services, stream: BackendStream, started: float, *, client_wants_usage: bool
) -> AsyncIterator[bytes]:
    """The backend's events as they come; a blocked answer ends with a content_filter chunk."""
    scanner = services.moderator.scanner()
    deltas = 0
    usage: Usage | None = None
    last: dict[str, Any] = {}
    try:
        async with aclosing(stream.events()) as events:
            async for event in events:
                if event.done:
                    rest = scanner.finish()
                    if rest is None:
                        yield from_blocked(services, last)
                        break
                    if rest:
                        yield _chunk(last, choices=[_content_choice(rest, None)])
                    if client_wants_usage and usage is None:
                        # The engine ignored stream_options: the client
                        # still gets the usage chunk it asked for, counted as the gateway can.
                        yield _usage_chunk(last, Usage(completion_tokens=deltas))
                    yield event.raw
                    break
                last = event.data or last
                delta = event.text()
                raw = event.raw
                if delta:
                    if not deltas:
                        services.metrics.first_token_seconds.observe(time.monotonic() - started)
                    deltas += 1
                if delta or (scanner.holding and event.finish_reason()):
                    released = scanner.feed(delta)
                    if released is not None and event.finish_reason():
                        rest = scanner.finish()
                        released = None if rest is None else released + rest
                    if released is None:
                        yield from_blocked(services, event.data or last)
                        break
                    if released != delta:
                        # Part of the text is held back (or released with it): the chunk
                        # as the engine sent it, carrying what may be sent now.
                        raw = _with_content(event.data or {}, released)
                if event.usage():
                    usage = Usage.model_validate(event.usage())
                    if not event.data or not event.data.get("choices"):
                        # The usage-only chunk was asked for by the gateway, not the client.
                        if client_wants_usage:
                            yield event.raw
                        continue
                yield raw
    except GatewayError as error:
        yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"
    finally:
        await stream.aclose()
        # llama.cpp does not report usage in streams; there each chunk carries one token.
        count_tokens(services, usage or Usage(completion_tokens=deltas))


def _usage_chunk(template: dict[str, Any], usage: Usage) -> bytes:
    """OpenAI's last chunk under `include_usage`: no choices, the usage. An engine that does not
    count usage in streams sends one token per chunk, so its chunks are its completion tokens;
    the prompt's tokens are not known to the gateway and are reported as 0."""
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return _chunk(template, choices=[], usage=usage.model_dump())


def from_blocked(services: Services, template: dict[str, Any]) -> bytes:
    """The end of a stream whose answer turned to a blocked term: the refusal, as a last
    chunk with finish_reason content_filter, and [DONE]."""
    services.moderator.count_output_block()
    choice = _content_choice("\n" + services.moderator.refusal, CONTENT_FILTER)
    return _chunk(template, choices=[choice]) + b"data: [DONE]\n\n"


def _content_choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}


def _with_content(data: dict[str, Any], text: str) -> bytes:
    """The chunk `data` with its first choice's content replaced by `text`."""
    chunk = copy.deepcopy(data)
    choices = chunk.get("choices") or [{"index": 0, "delta": {}}]
    choices[0].setdefault("delta", {})["content"] = text
    chunk["choices"] = choices
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _chunk(template: dict[str, Any], **fields: Any) -> bytes:
    """A chunk of the stream as an event, with the id, time and model of `template`."""
    chunk = {
        "id": template.get("id", ""),
        "object": "chat.completion.chunk",
        "created": template.get("created", int(time.time())),
        "model": template.get("model", ""),
        **fields,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
