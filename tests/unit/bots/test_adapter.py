"""The shared bot behaviour, with a fake gateway and a recording Reply."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest

from tertulia.bots.adapter import (
    CUT_OFF,
    FORGETFUL,
    HELP_TEXT,
    RESET_DONE,
    STILL_WAITING,
    UNAVAILABLE,
    WAKING,
    Adapter,
    IncomingMessage,
    Reply,
)
from tertulia.bots.dedup import Deduplicator
from tertulia.bots.metrics import BotMetrics
from tertulia.common.gateway_client import GatewayClient


class RecordingReply(Reply):
    def __init__(self, limit: int = 2000, append_only: bool = False) -> None:
        self.limit = limit
        self.append_only = append_only
        self.previews: list[tuple[int, str]] = []
        self.final: dict[int, str] = {}
        self.typed = 0
        self.helped = False
        self.notices: list[str] = []

    async def typing(self) -> None:
        self.typed += 1

    async def show(self, index: int, text: str) -> None:
        assert index not in self.final, "a finished piece was previewed again"
        self.previews.append((index, text))

    async def finish(self, index: int, text: str) -> None:
        self.final[index] = text

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def say_help(self, text: str) -> None:
        self.helped = True
        await self.say(text)

    @property
    def pieces(self) -> list[str]:
        return [self.final[index] for index in sorted(self.final)]


def sse(
    tokens: list[str],
    *,
    sources: list[dict[str, Any]] | None = None,
    error: bool = False,
    notice: str | None = None,
) -> bytes:
    meta: dict[str, Any] = {"conversation_id": "c", "sources": sources or []}
    if notice:
        meta["notice"] = notice
    events = [("meta", meta)]
    events += [("token", {"text": token}) for token in tokens]
    events.append(("error", {"code": "backend_error", "message": "cut"}) if error else ("done", {}))
    return b"".join(
        f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode() for kind, data in events
    )


def adapter_for(handler: Any) -> tuple[Adapter, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = handler(request)
        return response

    gateway = GatewayClient("http://gateway", "key", transport=httpx.MockTransport(record))
    return Adapter(gateway, Deduplicator(None), BotMetrics(), stream_interval=0.0), seen


def message(text: str = "hello", **fields: Any) -> IncomingMessage:
    defaults: dict[str, Any] = {"platform": "slack", "channel": "C1", "user": "U1", "direct": True}
    return IncomingMessage(text=text, **(defaults | fields))


async def test_streams_tokens_into_pieces_under_the_limit_with_sources() -> None:
    tokens = [f"word{index} " for index in range(100)]
    sources = [{"source": "docs/a.md", "title": "Guide", "section": "Install", "score": 0.9}]
    adapter, seen = adapter_for(lambda _: httpx.Response(200, content=sse(tokens, sources=sources)))
    reply = RecordingReply(limit=120)
    await adapter.handle(message("<@U0BOT> tell me", mention_markup=("<@U0BOT>",)), reply)
    assert json.loads(seen[0].content) == {
        "message": "tell me",
        "conversation_id": "slack:C1:main",
        "user": "slack:U1",
    }
    assert seen[0].headers["authorization"] == "Bearer key"
    assert all(len(piece) <= 120 for piece in reply.pieces)
    assert " ".join(reply.pieces).split()[:100] == "".join(tokens).split()
    assert reply.pieces[-1].endswith("Sources: Guide > Install")
    assert reply.previews, "the answer was not previewed while streaming"


async def test_append_only_previews_only_grow() -> None:
    tokens = [f"w{index} " for index in range(200)]
    adapter, _ = adapter_for(lambda _: httpx.Response(200, content=sse(tokens)))
    reply = RecordingReply(limit=200, append_only=True)
    await adapter.handle(message(), reply)
    for index in set(i for i, _ in reply.previews):
        shown = [text for i, text in reply.previews if i == index]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
        assert reply.final[index].startswith(shown[-1])


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (503, {"Retry-After": "5"}, UNAVAILABLE),
        (429, {"Retry-After": "7"}, "Please try again in 7 seconds."),
        (400, {}, "Sorry, I cannot answer that: the message contains a blocked term."),
    ],
)
async def test_gateway_failures_become_a_message_the_user_can_act_on(
    status: int, headers: dict[str, str], expected: str
) -> None:
    body = {"error": {"code": "x", "message": "the message contains a blocked term"}}
    adapter, _ = adapter_for(lambda _: httpx.Response(status, json=body, headers=headers))
    reply = RecordingReply()
    await adapter.handle(message(), reply)
    assert reply.pieces == [expected] or reply.pieces[0].endswith(expected)


async def test_unreachable_gateway_gets_the_friendly_message() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    adapter, _ = adapter_for(refuse)
    reply = RecordingReply()
    await adapter.handle(message(), reply)
    assert reply.pieces == [UNAVAILABLE]


async def test_a_stream_cut_mid_answer_keeps_what_came_and_says_so() -> None:
    adapter, _ = adapter_for(
        lambda _: httpx.Response(200, content=sse(["Half ", "an answer"], error=True))
    )
    reply = RecordingReply()
    await adapter.handle(message(), reply)
    assert reply.pieces == ["Half an answer" + CUT_OFF]


async def test_an_answer_given_without_memory_tells_the_user() -> None:
    notice = "Conversation memory is unavailable for a moment."
    adapter, _ = adapter_for(lambda _: httpx.Response(200, content=sse(["Hi."], notice=notice)))
    reply = RecordingReply()
    await adapter.handle(message(), reply)
    assert reply.pieces == ["Hi." + FORGETFUL]


async def test_reset_and_help_commands() -> None:
    adapter, seen = adapter_for(lambda _: httpx.Response(204))
    reply = RecordingReply()
    await adapter.handle(message("/reset"), reply)
    assert seen[0].method == "DELETE"
    assert seen[0].url.path == "/conversations/slack:C1:main"
    assert seen[0].url.params["user"] == "slack:U1"
    assert reply.pieces == [RESET_DONE]
    help_reply = RecordingReply()
    await adapter.handle(message("help"), help_reply)
    assert help_reply.helped and help_reply.pieces == [HELP_TEXT]


@pytest.mark.parametrize(
    "ignored",
    [
        message(direct=False),  # channel chatter
        message(from_bot=True),  # bots, the bot itself included
        message(direct=False, mentions_bot=True, from_bot=True),
    ],
)
async def test_only_direct_messages_and_mentions_from_people_are_answered(
    ignored: IncomingMessage,
) -> None:
    adapter, seen = adapter_for(lambda _: httpx.Response(200, content=sse(["hi"])))
    reply = RecordingReply()
    await adapter.handle(ignored, reply)
    assert seen == [] and reply.pieces == []


async def test_a_redelivered_event_is_answered_once() -> None:
    adapter, seen = adapter_for(lambda _: httpx.Response(200, content=sse(["hi"])))
    for _ in range(3):
        await adapter.handle(message(event_id="Ev1"), RecordingReply())
    assert len(seen) == 1


def test_conversation_ids_are_ones_the_gateway_accepts() -> None:
    odd = message(channel="chat #1", thread="1700000000.000100")
    assert odd.conversation_id == "slack:chat__1:1700000000.000100"


@pytest.mark.parametrize(
    ("state", "notice"),
    [
        # The gateway holds the request while the model wakes from zero: the notice says so.
        (httpx.Response(200, json={"asleep": True}), WAKING),
        # Busy, or starting for another reason.
        (httpx.Response(200, json={"asleep": False}), STILL_WAITING),
        # A gateway that cannot say (an older one): the plain notice, which is true anyway.
        (httpx.Response(404, json={"error": {"message": "Not Found", "code": "not_found"}}),
         STILL_WAITING),
    ],
)  # fmt: skip
async def test_an_answer_slow_to_begin_is_announced_once_and_then_given(
    state: httpx.Response, notice: str
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model/state":
            return state
        await asyncio.sleep(0.3)
        return httpx.Response(200, content=sse(["Hello ", "there."]))

    gateway = GatewayClient("http://gateway", "key", transport=httpx.MockTransport(slow))
    adapter = Adapter(
        gateway,
        Deduplicator(None),
        BotMetrics(),
        stream_interval=0.0,
        typing_interval=0.05,
        waiting_notice_after=0.1,
    )
    reply = RecordingReply()
    await adapter.handle(message(), reply)
    assert reply.notices == [notice]
    assert reply.pieces == ["Hello there."]
    assert reply.typed >= 2, "the typing state was not kept up while waiting"

    quick, _ = adapter_for(lambda _: httpx.Response(200, content=sse(["Hi."])))
    quick.waiting_notice_after = 0.1
    reply = RecordingReply()
    await quick.handle(message(), reply)
    await asyncio.sleep(0.2)
    assert reply.notices == [] and reply.pieces == ["Hi."]
