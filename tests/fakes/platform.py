"""What the fake chat platforms share: an aiohttp server on 127.0.0.1 in its own thread, a
record of what the bot sent, and rate limits on demand.

Tests are synchronous and drive the fake from the outside: `call` runs a coroutine on the
fake's loop, `sent` lists the messages the bot posted, `rate_limit_next` makes the next call
of a method answer 429 with the platform's own shape.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")


@dataclass
class SentMessage:
    """A message as the platform would display it, with every version it went through."""

    channel: str
    id: str
    text: str
    thread: str | None = None
    versions: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    extra: dict[str, Any] = field(default_factory=dict)


class FakePlatform:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.messages: list[SentMessage] = []
        self.calls: list[tuple[str, float]] = []
        self.rate_limited: list[tuple[str, float]] = []
        self._rate_limits: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        # Live WebSocket connections, for platforms that push events (Slack, Discord).
        self.sockets: list[web.WebSocketResponse] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._listener: socket.socket | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        raise NotImplementedError

    def start(self, listener: socket.socket | None = None) -> Self:
        """Serve on a free port of 127.0.0.1, or on `listener`, a listening socket made
        elsewhere (inside the real node's network namespace, say)."""
        self._listener = listener
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if self._listener is not None:
            site = web.SockSite(self._runner, self._listener)
        else:
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.host, self.port = site._server.sockets[0].getsockname()[:2]

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connected(self) -> bool:
        return any(not socket.closed for socket in self.sockets)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    # -- what the bot did ------------------------------------------------------------------
    def record_call(self, method: str) -> None:
        with self._lock:
            self.calls.append((method, time.monotonic()))

    def called(self, method: str) -> list[float]:
        with self._lock:
            return [at for name, at in self.calls if name == method]

    def sent(self, channel: str | None = None) -> list[SentMessage]:
        with self._lock:
            return [m for m in self.messages if channel is None or m.channel == channel]

    def add_message(self, message: SentMessage) -> SentMessage:
        message.versions.append(message.text)
        with self._lock:
            self.messages.append(message)
        return message

    def edit_message(self, message_id: str, text: str) -> SentMessage | None:
        with self._lock:
            for message in self.messages:
                if message.id == message_id:
                    message.text = text
                    message.versions.append(text)
                    return message
        return None

    # -- rate limits -----------------------------------------------------------------------
    def rate_limit_next(self, method: str, retry_after: float = 1.0) -> None:
        """The next call of `method` gets a 429 asking to wait `retry_after` seconds."""
        with self._lock:
            self._rate_limits[method] = retry_after

    def take_rate_limit(self, method: str) -> float | None:
        with self._lock:
            retry_after = self._rate_limits.pop(method, None)
            if retry_after is not None:
                self.rate_limited.append((method, time.monotonic()))
            return retry_after
