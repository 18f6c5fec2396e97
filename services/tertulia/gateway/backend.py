"""One client for every OpenAI-compatible model server: vLLM, Ollama's /v1 and llama.cpp.

Connections are pooled; a connection that cannot be opened is retried with backoff, on the
next replica when there are several (the request never reached the server, so retrying is
safe); nothing else is retried. Which replica answers is the router's choice (routing.py).
Streams are passed on event by event, never buffered, and closing one closes the upstream
request.

The client is aiohttp's: httpx's pool (httpcore) scans every pooled connection for every
waiting request, which measured as a throughput collapse at 256 concurrent streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi.sse import EventSourceResponse
from pydantic_core import from_json, to_json
from starlette.types import Receive, Scope, Send

from tertulia.common import sse
from tertulia.common.logging import protect
from tertulia.gateway.errors import (
    BackendFailed,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
)
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.routing import Pick, Router
from tertulia.gateway.settings import BackendSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0
_BACKOFF_SECONDS = 0.2


async def back_off(seconds: float) -> None:
    """The wait before a connection is tried again: a name of its own, so a test replaces
    this wait alone and not every sleep of the event loop."""
    await asyncio.sleep(seconds)


# Failures before the request left: the server never saw it, so a retry cannot double it.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class StreamBroken(GatewayError):
    """The model server's stream ended before its last event."""

    status_code = 502
    code = "stream_interrupted"


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event from the backend: its raw bytes and its parsed JSON."""

    raw: bytes
    data: dict[str, Any] | None

    @property
    def done(self) -> bool:
        return self.data is None

    def _delta(self) -> dict[str, Any]:
        """The first choice's delta ({} when the chunk has none)."""
        choices = (self.data or {}).get("choices") or []
        return (choices[0].get("delta") or {}) if choices else {}

    def text(self) -> str:
        """The content delta this chunk carries, if any."""
        return str(self._delta().get("content") or "")

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool-call deltas this chunk carries, if any."""
        return list(self._delta().get("tool_calls") or [])

    def finish_reason(self) -> str | None:
        choices = (self.data or {}).get("choices") or []
        return choices[0].get("finish_reason") if choices else None

    def usage(self) -> dict[str, int] | None:
        return (self.data or {}).get("usage")


class BackendStream:
    """An open streaming response: read `events()`, and always `aclose()` it."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        metrics: GatewayMetrics,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._response = response
        self._metrics = metrics
        self._release = release

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        try:
            async for event in sse.events(self._lines()):
                payload = event.data.strip().encode()
                if payload == b"[DONE]":
                    yield StreamEvent(b"data: [DONE]\n\n", None)
                    return
                data = from_json(payload)
                if "error" in data:
                    self._metrics.backend_errors.labels("stream_error").inc()
                    raise StreamBroken(_error_message(data, "the model server reported an error"))
                yield StreamEvent(b"data: " + payload + b"\n\n", data)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self._metrics.backend_errors.labels("stream_interrupted").inc()
            raise StreamBroken("the model server's stream was interrupted") from error
        # A stream that ends without [DONE] is cut too: vLLM, Ollama and llama.cpp all send it.
        self._metrics.backend_errors.labels("stream_interrupted").inc()
        raise StreamBroken("the model server's stream ended early")

    async def _lines(self) -> AsyncIterator[str]:
        async for raw in self._response.content:
            yield raw.decode()

    async def aclose(self) -> None:
        # Closing (not releasing) drops the connection, which tells the server to stop.
        if not self._response.closed:
            self._response.close()
        self._release()
        self._release = lambda: None


class UpstreamEventSource(EventSourceResponse):
    """Server-sent events from an upstream stream, which is closed however the response
    ends: finished, failed, or never started because the client left before its first byte
    (a generator that never ran runs no `finally`)."""

    def __init__(self, content: AsyncIterable[bytes], stream: BackendStream) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.aclose()


class Backend:
    def __init__(self, settings: BackendSettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.router = Router(str(settings.url), settings.routing, settings.replica_capacity)
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key_file is not None:
            key = protect(settings.api_key_file.read_text().strip())
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None
        self._model = settings.model
        # Awaited before a request while the router knows no replica (autoscale.py holds it
        # until one is ready); None: the request goes to the Service.
        self.hold: Callable[[], Awaitable[None]] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._settings.connect_timeout,
                    sock_read=self._settings.read_timeout,
                ),
                connector=aiohttp.TCPConnector(
                    limit=self._settings.max_connections,
                    limit_per_host=0,
                    ttl_dns_cache=60,
                    keepalive_timeout=self._settings.keepalive_seconds,
                ),
                headers=self._headers,
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def model(self) -> str:
        """The model id to send upstream: configured, or the first the server lists."""
        if not self._model:
            models = await self.list_models()
            if not models:
                raise BackendFailed("the model server lists no models")
            self._model = models[0]
        return self._model

    async def list_models(self, hold: bool = True) -> list[str]:
        # Not a generation: it does not count as load, for routing or for the autoscaler (a
        # readiness probe in flight must not wake a model scaled to zero).
        response, release = await self._send("GET", "/models", hold=hold, counted=False)
        try:
            body = await self._read_json(response)
        finally:
            response.release()
            release()
        return [str(entry["id"]) for entry in body.get("data", [])]

    async def complete(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """A non-streaming chat completion; `key` (a conversation) picks the replica."""
        body = {**body, "model": await self.model(), "stream": False}
        response, release = await self._send("POST", "/chat/completions", body, key)
        try:
            return await self._read_json(response)
        finally:
            response.release()
            release()

    async def open_stream(self, body: dict[str, Any], key: str | None = None) -> BackendStream:
        """Start a streaming completion; errors before the first byte raise here, as HTTP
        errors. `key` (a conversation) picks the replica."""
        body = {
            **body,
            "model": await self.model(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response, release = await self._send("POST", "/chat/completions", body, key)
        if response.status >= 400:
            try:
                await self._read_json(response)
            finally:
                response.release()
                release()
        return BackendStream(response, self._metrics, release)

    @property
    def asleep(self) -> bool:
        """Whether the model is scaled to zero (or not yet up) and requests wait for it."""
        return self.hold is not None and not self.router.replicas

    async def ping(self) -> None:
        """Raise unless the model server answers /models (never held: a probe)."""
        await self.list_models(hold=False)

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        hold: bool = True,
        counted: bool = True,
    ) -> tuple[aiohttp.ClientResponse, Callable[[], None]]:
        """The response, and what to call once it is read or closed: the replica's request
        counts as in flight until then (unless not `counted`). A replica that cannot be
        reached is left out and gives way to the next (its conversations go to their
        neighbours on the ring), without counting as a retry: the lookup may still list pods
        that have gone, and each one left out shortens the list. With none left the request
        waits for one when the model scales from zero, and goes to the Service otherwise. A
        replica that took the request and closed the connection without an answer (a pod
        stopping) gives it, once, to the next."""
        data = None if body is None else to_json(body)
        waiter = self.hold if hold else None
        # Waits for a replica: one, and one more if the replica it got had gone.
        waits = 2 if waiter is not None else 0
        attempt = 0
        resent = False
        candidates: list[str] = []
        # The request's first choice, which the routed metric reports against.
        pick, first = Pick(self.router.url), True
        while True:
            if waiter is not None and waits and not self.router.replicas:
                waits -= 1
                await waiter()
                candidates, attempt, first = [], 0, True
            if not candidates:
                again = self.router.pick(key)
                if first:
                    pick, first = again, False
                candidates = [again.url, *again.fallbacks]
            url = candidates[attempt % len(candidates)]
            release = self._lease(url) if counted else _uncounted
            try:
                response = await self.session.request(method, url + path, data=data)
                # Counted once, as sent: a request its own replica could not take went to
                # a neighbour.
                outcome = _outcome(pick.affinity, self.router) if url == pick.url else "neighbour"
                self._metrics.routed.labels(outcome).inc()
                return response, release
            except _NOT_SENT as error:
                release()
                if url != self.router.url:
                    # Gone, most likely, while the lookup still lists it: left out a while,
                    # and the request picks again among the others (or, with none, waits
                    # for one or goes to the Service).
                    self.router.eject(url)
                    candidates = []
                    continue
                if attempt == self._settings.retries:
                    logger.warning(
                        "the model server could not be reached",
                        extra={"replica": url, "error": str(error)},
                    )
                    self._metrics.backend_errors.labels("unavailable").inc()
                    raise BackendUnavailable(
                        "the model server is unreachable; try again shortly",
                        retry_after=RETRY_AFTER_SECONDS,
                    ) from error
                attempt += 1
                if len(candidates) == 1:
                    await back_off(_BACKOFF_SECONDS * 2 ** (attempt - 1))
            except TimeoutError as error:
                release()
                self._metrics.backend_errors.labels("timeout").inc()
                raise BackendTimeout("the model server did not answer in time") from error
            except aiohttp.ClientConnectionError as error:
                release()
                if not resent and url != self.router.url:
                    # Closed before any answer: nothing reached the client, and a pod that
                    # is stopping will not answer; the next replica takes it (the same one
                    # when it is the only one: a connection the server closed as it was
                    # reused).
                    resent = True
                    if len(candidates) > 1:
                        candidates.remove(url)
                    continue
                # The server went away mid-request (a restart, a pod deleted): it will be
                # back, so the client is told when to try again.
                self._metrics.backend_errors.labels("interrupted").inc()
                raise BackendUnavailable(
                    "the connection to the model server was lost; try again shortly",
                    retry_after=RETRY_AFTER_SECONDS,
                ) from error
            except aiohttp.ClientError as error:
                release()
                self._metrics.backend_errors.labels("interrupted").inc()
                raise BackendFailed("the connection to the model server failed") from error

    def _lease(self, url: str) -> Callable[[], None]:
        """Count a request in flight on `url` (a replica's, or the Service's); the function
        that ends it, once."""
        # The Service's too: the autoscaler counts them (requests a scale from zero let go
        # through the Service before the replica's name resolved, say).
        self.router.acquire(url)
        gauge = self._metrics.backend_in_flight.labels(url)
        gauge.inc()
        ended = False

        def release() -> None:
            nonlocal ended
            if not ended:
                ended = True
                gauge.dec()
                self.router.release(url)

        return release

    async def _read_json(self, response: aiohttp.ClientResponse) -> dict[str, Any]:
        """The body as JSON, or the HTTP error it stands for."""
        try:
            raw = await response.read()
        except TimeoutError as error:
            self._metrics.backend_errors.labels("timeout").inc()
            raise BackendTimeout("the model server did not answer in time") from error
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
            self._metrics.backend_errors.labels("interrupted").inc()
            raise BackendUnavailable(
                "the model server's answer was cut off; try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            ) from error
        except aiohttp.ClientError as error:
            self._metrics.backend_errors.labels("interrupted").inc()
            raise BackendFailed("the model server's answer was interrupted") from error
        try:
            body = from_json(raw) if raw else {}
        except ValueError:
            body = {}
        if response.status >= 400:
            self._raise_for_status(response.status, _error_message(body, response.reason or ""))
        if not isinstance(body, dict):
            raise BackendFailed("the model server answered with something other than JSON")
        return body

    def _raise_for_status(self, status: int, message: str) -> None:
        self._metrics.backend_errors.labels(f"http_{status}").inc()
        if status == 503:
            raise BackendUnavailable(
                f"the model server is not ready: {message}", retry_after=RETRY_AFTER_SECONDS
            )
        if status == 429:
            raise BackendUnavailable(f"the model server is busy: {message}", retry_after=1)
        if 400 <= status < 500:
            raise BackendRejected(f"the model server refused the request: {message}")
        raise BackendFailed(f"the model server failed ({status}): {message}")


def _outcome(affinity: bool | None, router: Router) -> str:
    """How a replica was chosen, as the routed metric counts it."""
    if not router.replicas:
        return "service"
    if affinity is None:
        return "round_robin"
    return "affinity" if affinity else "neighbour"


def _error_message(body: Any, fallback: str) -> str:
    """The message of an OpenAI-style error body, shortened; `fallback` when it has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    else:
        message = body.get("detail") if isinstance(body, dict) else None
    return str(message or fallback)[:500]


def _uncounted() -> None:
    """The end of a request that was never counted in flight."""
