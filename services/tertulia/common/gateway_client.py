"""The gateway's client, for the bots and the terminal chat: streamed answers and resets.

Every failure ends in one of three typed errors, so a caller can tell its user what to do:
`GatewayRateLimited` (wait), `GatewayRefused` (change the message) or `GatewayUnavailable`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tertulia.common import sse
from tertulia.common.logging import protect

# Attempts again to open a connection, after httpcore's short backoff.
CONNECT_RETRIES = 2


class GatewayError(Exception):
    """Base of the client's errors; `message` is the gateway's reason, safe to show a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GatewayUnavailable(GatewayError):
    """The gateway or its model server cannot answer now; worth retrying later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayRateLimited(GatewayError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayRefused(GatewayError):
    """The gateway refused this message (too long, blocked, invalid): retrying will not help."""

    def __init__(self, message: str, status_code: int, code: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


@dataclass(frozen=True)
class Source:
    source: str
    title: str = ""
    section: str = ""
    score: float = 0.0

    def label(self) -> str:
        parts = [self.title or self.source]
        if self.section:
            parts.append(self.section)
        return " > ".join(parts)


@dataclass
class StreamEvent:
    """One server-sent event of `/chat/stream`: `meta`, `token`, `done` or `error`."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.data.get("text", ""))

    @property
    def sources(self) -> list[Source]:
        return [
            Source(
                source=str(item.get("source", "")),
                title=str(item.get("title", "")),
                section=str(item.get("section", "")),
                score=float(item.get("score", 0.0)),
            )
            for item in self.data.get("sources", [])
        ]


def read_key(path: Path | None) -> str | None:
    """The API key from a mounted Secret file, or None when none is configured."""
    if path is None:
        return None
    return protect(path.read_text().strip() or None)


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            # Tokens can be seconds apart on a busy CPU model: the read timeout is per chunk.
            timeout=httpx.Timeout(timeout, connect=5.0),
            # A connection refused (a gateway pod that has just stopped listening, before the
            # Service drops it) is tried again: nothing was sent.
            transport=transport or httpx.AsyncHTTPTransport(retries=CONNECT_RETRIES),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream_chat(
        self, message: str, *, conversation_id: str, user: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        """The answer's events in order; an `error` event mid-stream raises GatewayUnavailable."""
        body: dict[str, Any] = {"message": message, "conversation_id": conversation_id}
        if user:
            body["user"] = user
        try:
            async with self._client.stream("POST", "/chat/stream", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error_for(response)
                async for event in _server_sent_events(response):
                    if event.kind == "error":
                        raise GatewayUnavailable(
                            str(event.data.get("message", "the answer was interrupted"))
                        )
                    yield event
        except httpx.TransportError as error:
            raise GatewayUnavailable(f"cannot reach the gateway ({type(error).__name__})") from None

    async def model_asleep(self) -> bool:
        """Whether the gateway holds requests while the model wakes (scaled to zero)."""
        try:
            response = await self._client.get("/model/state", timeout=5.0)
        except httpx.TransportError as error:
            raise GatewayUnavailable(f"cannot reach the gateway ({type(error).__name__})") from None
        if response.status_code != 200:
            raise _error_for(response)
        return bool(response.json()["asleep"])

    async def claim_event(self, event_id: str, ttl_seconds: int) -> bool:
        """Whether this is the first claim of a platform event within `ttl_seconds`."""
        body = {"id": event_id, "ttl_seconds": ttl_seconds}
        try:
            response = await self._client.post("/events", json=body, timeout=10.0)
        except httpx.TransportError as error:
            raise GatewayUnavailable(f"cannot reach the gateway ({type(error).__name__})") from None
        if response.status_code != 200:
            raise _error_for(response)
        return bool(response.json()["first"])

    async def reset(self, *, conversation_id: str, user: str | None = None) -> bool:
        """Forget the conversation; False when there was nothing to forget."""
        params = {"user": user} if user else None
        try:
            response = await self._client.delete(f"/conversations/{conversation_id}", params=params)
        except httpx.TransportError as error:
            raise GatewayUnavailable(f"cannot reach the gateway ({type(error).__name__})") from None
        if response.status_code == 404:
            return False
        if response.status_code != 204:
            raise _error_for(response)
        return True


def _error_for(response: httpx.Response) -> GatewayError:
    try:
        detail = response.json().get("error", {})
        message = str(detail.get("message") or response.reason_phrase)
        code = str(detail.get("code") or "error")
    except (ValueError, AttributeError):
        message, code = response.reason_phrase or f"HTTP {response.status_code}", "error"
    retry_after = _retry_after(response)
    if response.status_code == 429:
        return GatewayRateLimited(message, retry_after or 1.0)
    if response.status_code >= 500:
        return GatewayUnavailable(message, retry_after)
    return GatewayRefused(message, response.status_code, code)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def _server_sent_events(response: httpx.Response) -> AsyncIterator[StreamEvent]:
    async for event in sse.events(response.aiter_lines()):
        yield StreamEvent(event.event, json.loads(event.data))
