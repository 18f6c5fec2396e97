"""The one server-sent events parser, read as the HTML standard reads an event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tertulia.common.sse import ServerSentEvent, events


def parsed(text: str) -> list[ServerSentEvent]:
    async def lines() -> AsyncIterator[str]:
        for line in text.splitlines(keepends=True):
            yield line

    async def collect() -> list[ServerSentEvent]:
        return [event async for event in events(lines())]

    return asyncio.run(collect())


def test_events_gather_their_data_lines_until_a_blank_line() -> None:
    stream = (
        ": a comment, and a keep-alive\n"
        'event: meta\ndata: {"a":\ndata:  1}\n\n'
        "data: plain\r\n\r\n"
        "event: done\n\n"  # no data: nothing is dispatched
        "data: [DONE]"  # the stream ends without its blank line
    )
    assert parsed(stream) == [
        ServerSentEvent("meta", '{"a":\n 1}'),
        ServerSentEvent("message", "plain"),
        ServerSentEvent("message", "[DONE]"),
    ]


def test_an_event_name_does_not_leak_into_the_next_event() -> None:
    assert parsed("event: token\ndata: x\n\ndata: y\n\n") == [
        ServerSentEvent("token", "x"),
        ServerSentEvent("message", "y"),
    ]
