"""Server-sent events read from lines, as the HTML standard's event stream parser does: the
one parser of the gateway's backend client (the model server's stream) and of the gateway
client the bots use (the gateway's own stream)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


class Decoder:
    """Lines in, events out: `data` lines gather until a blank line dispatches them, `event`
    names the type (`message` when unnamed), lines starting with `:` are comments."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def flush(self) -> ServerSentEvent | None:
        """The event gathered so far, if any: at a blank line, or where the stream ends."""
        event = None
        if self._data:
            event = ServerSentEvent(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return event


async def events(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    """The events of a stream of lines; one the stream ends in the middle of still counts."""
    decoder = Decoder()
    async for line in lines:
        if (event := decoder.feed(line)) is not None:
            yield event
    if (event := decoder.flush()) is not None:
        yield event
