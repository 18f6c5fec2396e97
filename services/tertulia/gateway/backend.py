"""One client for every OpenAI-compatible model server: vLLM, Ollama's /v1 and llama.cpp.

Connections are pooled; a connection that cannot be opened is retried with backoff (the
request never reached the server, so retrying is safe); nothing else is retried. Streams are
passed on event by event, never buffered, and closing one closes the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from tertulia.gateway.errors import (
    BackendFailed,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
)
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import BackendSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0
_BACKOFF_SECONDS = 0.2


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

    def text(self) -> str:
        """The content delta this chunk carries, if any."""
        if not self.data:
            return ""
        choices = self.data.get("choices") or []
        if not choices:
            return ""
        return str((choices[0].get("delta") or {}).get("content") or "")

    def finish_reason(self) -> str | None:
        choices = (self.data or {}).get("choices") or []
        return choices[0].get("finish_reason") if choices else None

    def usage(self) -> dict[str, int] | None:
        return (self.data or {}).get("usage")


class BackendStream:
    """An open streaming response: read `events()`, and always `aclose()` it."""

    def __init__(self, response: httpx.Response, metrics: GatewayMetrics) -> None:
        self._response = response
        self._metrics = metrics

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, keep-alives and blank separators
                payload = line[5:].strip()
                if payload == "[DONE]":
                    yield StreamEvent(b"data: [DONE]\n\n", None)
                    return
                data = json.loads(payload)
                if "error" in data:
                    self._metrics.backend_errors.labels("stream_error").inc()
                    raise StreamBroken(_error_message(data, "the model server reported an error"))
                yield StreamEvent(f"data: {payload}\n\n".encode(), data)
        except (httpx.TransportError, json.JSONDecodeError) as error:
            self._metrics.backend_errors.labels("stream_interrupted").inc()
            raise StreamBroken("the model server's stream was interrupted") from error
        # A stream that ends without [DONE] is cut too: vLLM, Ollama and llama.cpp all send it.
        self._metrics.backend_errors.labels("stream_interrupted").inc()
        raise StreamBroken("the model server's stream ended early")

    async def aclose(self) -> None:
        await self._response.aclose()


class Backend:
    def __init__(
        self,
        settings: BackendSettings,
        metrics: GatewayMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        headers = {}
        if settings.api_key_file is not None:
            headers["Authorization"] = f"Bearer {settings.api_key_file.read_text().strip()}"
        self._client = httpx.AsyncClient(
            base_url=str(settings.url).rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(
                settings.read_timeout,
                connect=settings.connect_timeout,
                pool=settings.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
        )
        self._model = settings.model

    async def aclose(self) -> None:
        await self._client.aclose()

    async def model(self) -> str:
        """The model id to send upstream: configured, or the first the server lists."""
        if not self._model:
            models = await self.list_models()
            if not models:
                raise BackendFailed("the model server lists no models")
            self._model = models[0]
        return self._model

    async def list_models(self) -> list[str]:
        response = await self._send(self._client.build_request("GET", "/models"))
        await response.aread()
        self._raise_for_status(response)
        return [str(entry["id"]) for entry in response.json().get("data", [])]

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion."""
        body = {**body, "model": await self.model(), "stream": False}
        response = await self._send(
            self._client.build_request("POST", "/chat/completions", json=body)
        )
        try:
            await response.aread()
        except httpx.TimeoutException as error:
            self._metrics.backend_errors.labels("timeout").inc()
            raise BackendTimeout("the model server did not answer in time") from error
        except httpx.TransportError as error:
            self._metrics.backend_errors.labels("interrupted").inc()
            raise BackendFailed("the model server's answer was interrupted") from error
        self._raise_for_status(response)
        result: dict[str, Any] = response.json()
        return result

    async def open_stream(self, body: dict[str, Any]) -> BackendStream:
        """Start a streaming completion; errors before the first byte raise here, as HTTP errors."""
        body = {
            **body,
            "model": await self.model(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        request = self._client.build_request("POST", "/chat/completions", json=body)
        response = await self._send(request, stream=True)
        if response.is_error:
            await response.aread()
            await response.aclose()
            self._raise_for_status(response)
        return BackendStream(response, self._metrics)

    async def ping(self) -> None:
        """Raise unless the model server answers /models."""
        await self.list_models()

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        for attempt in range(self._settings.retries + 1):
            try:
                return await self._client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self._settings.retries:
                    self._metrics.backend_errors.labels("unavailable").inc()
                    raise BackendUnavailable(
                        "the model server is unreachable; try again shortly",
                        retry_after=RETRY_AFTER_SECONDS,
                    ) from error
                await asyncio.sleep(_BACKOFF_SECONDS * 2**attempt)
            except httpx.PoolTimeout as error:
                self._metrics.backend_errors.labels("saturated").inc()
                raise BackendUnavailable(
                    "the gateway has no free connection to the model server; try again shortly",
                    retry_after=1,
                ) from error
            except httpx.TimeoutException as error:
                self._metrics.backend_errors.labels("timeout").inc()
                raise BackendTimeout("the model server did not answer in time") from error
            except httpx.TransportError as error:
                self._metrics.backend_errors.labels("interrupted").inc()
                raise BackendFailed("the connection to the model server failed") from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(self, response: httpx.Response) -> None:
        if not response.is_error:
            return
        self._metrics.backend_errors.labels(f"http_{response.status_code}").inc()
        try:
            message = _error_message(response.json(), response.reason_phrase)
        except ValueError:
            message = response.reason_phrase
        if response.status_code == 503:
            raise BackendUnavailable(
                f"the model server is not ready: {message}", retry_after=RETRY_AFTER_SECONDS
            )
        if response.status_code == 429:
            raise BackendUnavailable(f"the model server is busy: {message}", retry_after=1)
        if response.is_client_error:
            raise BackendRejected(f"the model server refused the request: {message}")
        raise BackendFailed(f"the model server failed ({response.status_code}): {message}")


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
