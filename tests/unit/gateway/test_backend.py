"""The backend client retries only what never reached the server and reports the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tertulia.gateway.backend import Backend, StreamBroken
from tertulia.gateway.errors import BackendTimeout, BackendUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import BackendSettings

BODY = {"messages": [{"role": "user", "content": "hi"}]}


def backend(handler: Callable[[httpx.Request], httpx.Response], retries: int = 2) -> Backend:
    settings = BackendSettings(url="http://model/v1", model="m", retries=retries)
    return Backend(settings, GatewayMetrics.create(), httpx.MockTransport(handler))


class Chunks(httpx.AsyncByteStream):
    """A response body sent in pieces, optionally broken off after them."""

    def __init__(self, *chunks: bytes, cut: bool = False) -> None:
        self.chunks = chunks
        self.cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.cut:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )


def delta(text: str) -> bytes:
    return b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % text.encode()


async def test_connection_errors_are_retried_then_reported_as_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tertulia.gateway.backend._BACKOFF_SECONDS", 0.0)
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused")

    with pytest.raises(BackendUnavailable) as raised:
        await backend(refuse, retries=2).complete(BODY)

    assert len(attempts) == 3
    assert raised.value.headers == {"Retry-After": "5"}


async def test_a_connection_that_heals_within_the_retries_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tertulia.gateway.backend._BACKOFF_SECONDS", 0.0)
    attempts = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        if len(attempts) < 2:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    result = await backend(flaky).complete(BODY)

    assert result["choices"][0]["message"]["content"] == "ok"


async def test_server_errors_and_read_timeouts_are_not_retried() -> None:
    attempts = []

    def slow(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("no answer")

    with pytest.raises(BackendTimeout):
        await backend(slow).complete(BODY)
    assert len(attempts) == 1


async def test_stream_yields_each_event_and_ends_at_done() -> None:
    def stream(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=Chunks(delta("Hel"), delta("lo"), b": keep-alive\n\n", b"data: [DONE]\n\n")
        )

    opened = await backend(stream).open_stream(BODY)
    events = [event async for event in opened.events()]

    assert [event.text() for event in events] == ["Hel", "lo", ""]
    assert events[-1].done


async def test_a_stream_cut_mid_way_raises_stream_broken_after_the_tokens_it_had() -> None:
    def cut(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(delta("Hel"), cut=True))

    opened = await backend(cut).open_stream(BODY)
    received = []
    with pytest.raises(StreamBroken, match="interrupted"):
        async for event in opened.events():
            received.append(event.text())
    assert received == ["Hel"]


async def test_a_stream_that_ends_without_done_is_broken_too() -> None:
    def short(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(delta("Hel")))

    opened = await backend(short).open_stream(BODY)
    with pytest.raises(StreamBroken, match="ended early"):
        async for _ in opened.events():
            pass


async def test_stream_requests_usage_and_names_the_configured_model() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, stream=Chunks(b"data: [DONE]\n\n"))

    await (await backend(record).open_stream(BODY)).aclose()

    body = sent[0].read()
    assert b'"model": "m"' in body or b'"model":"m"' in body
    assert b"include_usage" in body


async def test_without_a_configured_model_the_first_listed_is_used() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "gemma"}, {"id": "other"}]})
        return httpx.Response(200, json={"choices": [], "model": "gemma"})

    settings = BackendSettings(url="http://model/v1")
    client = Backend(settings, GatewayMetrics.create(), httpx.MockTransport(serve))

    assert await client.model() == "gemma"
