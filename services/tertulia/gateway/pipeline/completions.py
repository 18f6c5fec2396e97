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
from tertulia.gateway.pipeline.moderation import OutputScanner
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
    if request.uses_tools() and not settings.backend.tools:
        raise InvalidInput(
            "tools: this ChatBot's model is not set up to call tools (spec.model.tools.enabled "
            "starts its engine with tool calling)",
            param="tools",
        )
    limit = settings.limits.max_messages
    if len(request.messages) > limit:
        raise PayloadTooLarge(f"messages has {len(request.messages)} entries; the limit is {limit}")
    user_messages = [m for m in request.messages if m.role == "user"]
    if not user_messages:
        raise InvalidInput("messages holds no message with role 'user'")
    for index, message in enumerate(request.messages):
        limit = settings.limits.max_message_chars
        if message.role in ("system", "developer", "tool"):
            # A tool's result is context the client fetched, as long as a system message's.
            limit = settings.limits.max_context_chars + settings.limits.max_message_chars
        check_text(f"messages[{index}].content", message.text(), limit)
        check_text(f"messages[{index}].tool_calls", message.calls_text(), limit)
    # Every message is the model's to read, the client's system and assistant turns too, the
    # calls and results of its tools, and the tools' own names and descriptions.
    await services.moderator.check_input(
        *(message.text() for message in request.messages),
        *(message.calls_text() for message in request.messages if message.tool_calls),
        *(tool.model_dump_json(exclude_none=True) for tool in request.tools or []),
    )

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
        # The calls the model asks for are its words too: a blocked term in their arguments
        # refuses the answer as one in its text does.
        said = "\n".join([str(message.get("content") or ""), *_call_texts(message)])
        if not await services.moderator.output_allowed(said):
            message["content"] = services.moderator.refusal
            message.pop("tool_calls", None)
            choice["finish_reason"] = CONTENT_FILTER
    if result.get("usage"):
        count_tokens(services, Usage.model_validate(result["usage"]))
    return result


async def passthrough(
    services: Services, stream: BackendStream, started: float, *, client_wants_usage: bool
) -> AsyncIterator[bytes]:
    """The backend's events as they come; a blocked answer ends with a content_filter chunk.

    With blocked terms set, the chunks from a tool call's first on are held until the stream
    ends, and pass only if what they say (the calls' names and arguments, any text beside
    them) holds none: a call is of use only whole, so its client waits for nothing it could
    use, and no part of a blocked term reaches it."""
    scanner = services.moderator.scanner()
    deltas = 0
    usage: Usage | None = None
    last: dict[str, Any] = {}
    calls = _HeldCalls() if services.moderator.has_terms else None
    try:
        async with aclosing(stream.events()) as events:
            async for event in events:
                if event.done:
                    if calls is not None and calls.chunks:
                        if services.moderator.blocked_term(calls.said()) is not None:
                            yield from_blocked(services, last)
                            break
                        for chunk in calls.chunks:
                            yield chunk
                    chunk, blocked = _release_held(services, scanner, last)
                    if chunk:
                        yield chunk
                    if blocked:
                        break
                    if client_wants_usage and usage is None:
                        # The engine ignored stream_options: the client
                        # still gets the usage chunk it asked for, counted as the gateway can.
                        yield _usage_chunk(last, Usage(completion_tokens=deltas))
                    yield event.raw
                    break
                if event.usage():
                    usage = Usage.model_validate(event.usage())
                    if not event.data or not event.data.get("choices"):
                        # The usage-only chunk was asked for by the gateway, not the client.
                        if client_wants_usage:
                            yield event.raw
                        continue
                last = event.data or last
                delta = event.text()
                raw = event.raw
                tool_calls = event.tool_calls()
                if delta or tool_calls:
                    if not deltas:
                        services.metrics.first_token_seconds.observe(time.monotonic() - started)
                    deltas += 1
                if calls is not None and (tool_calls or calls.chunks):
                    if not calls.chunks:
                        # The text before the first call goes out whole before it is held.
                        chunk, blocked = _release_held(services, scanner, last)
                        if chunk:
                            yield chunk
                        if blocked:
                            break
                        scanner = services.moderator.scanner()
                    calls.add(raw, delta, tool_calls)
                    continue
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
                yield raw
    except GatewayError as error:
        yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"
    finally:
        await stream.aclose()
        # llama.cpp does not report usage in streams; there each chunk carries one token.
        count_tokens(services, usage or Usage(completion_tokens=deltas))


def _release_held(
    services: Services, scanner: OutputScanner, template: dict[str, Any]
) -> tuple[bytes, bool]:
    """The text the scanner still holds, as a chunk (empty when none), and whether the answer
    turned out blocked (the chunk is then the refusal, which ends the stream)."""
    rest = scanner.finish()
    if rest is None:
        return from_blocked(services, template), True
    return (_chunk(template, choices=[_content_choice(rest, None)]) if rest else b""), False


class _HeldCalls:
    """The chunks of a stream from its first tool call on, and what they say: each call's
    name and arguments as their deltas add up (by the call's index), and any text."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self._calls: dict[int, list[str]] = {}
        self._text: list[str] = []

    def add(self, raw: bytes, text: str, tool_calls: list[dict[str, Any]]) -> None:
        self.chunks.append(raw)
        self._text.append(text)
        for call in tool_calls:
            parts = self._calls.setdefault(int(call.get("index") or 0), ["", ""])
            function = call.get("function") or {}
            parts[0] += function.get("name") or ""
            parts[1] += function.get("arguments") or ""

    def said(self) -> str:
        return "\n".join(["".join(self._text), *(" ".join(p) for p in self._calls.values())])


def _call_texts(message: dict[str, Any]) -> list[str]:
    """The name and arguments of each tool call in a message or a stream's delta."""
    return [
        f"{(call.get('function') or {}).get('name') or ''} "
        f"{(call.get('function') or {}).get('arguments') or ''}"
        for call in message.get("tool_calls") or []
    ]


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
