"""The fake OpenAI-compatible backend answers like the real engines and fails on demand."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.openai_backend import FakeBackend, FakeBackendConfig, StreamCutError


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(FakeBackendConfig(reply="The sea is wide and deep."))


@pytest.fixture
async def http(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=backend)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake/v1") as client:
        yield client


def chat(stream: bool, **extra: object) -> dict[str, object]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Tell me about the sea"}],
        "stream": stream,
        **extra,
    }


async def read_stream(response: httpx.Response) -> tuple[list[dict[str, object]], bool]:
    chunks, done = [], False
    async for line in response.aiter_lines():
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks, done


async def test_stream_sends_the_scripted_reply_token_by_token(http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/chat/completions", json=chat(True)) as response:
        chunks, done = await read_stream(response)

    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert done
    assert "".join(deltas) == "The sea is wide and deep."
    assert len([d for d in deltas if d]) == 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_non_streaming_reply_carries_usage(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json=chat(False))

    body = response.json()
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The sea is wide and deep.",
    }
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


async def test_empty_reply_setting_echoes_the_last_user_message(
    backend: FakeBackend, http: httpx.AsyncClient
) -> None:
    backend.config.reply = ""

    response = await http.post("/chat/completions", json=chat(False))

    assert response.json()["choices"][0]["message"]["content"] == "You said: Tell me about the sea"
    assert backend.requests[-1]["messages"][0]["content"] == "Tell me about the sea"


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json=chat(False, max_tokens=2))

    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "The sea"
    assert choice["finish_reason"] == "length"


async def test_scripted_status_returns_an_openai_error_body(
    backend: FakeBackend, http: httpx.AsyncClient
) -> None:
    backend.config.fail_status = 503

    response = await http.post("/chat/completions", json=chat(True))

    assert response.status_code == 503
    assert "scripted failure" in response.json()["error"]["message"]


async def test_scripted_cut_breaks_the_stream_after_n_tokens(
    backend: FakeBackend, http: httpx.AsyncClient
) -> None:
    backend.config.cut_after_tokens = 2
    received: list[str] = []

    with pytest.raises(StreamCutError):
        async with http.stream("POST", "/chat/completions", json=chat(True)) as response:
            async for line in response.aiter_lines():
                received.append(line)

    assert "data: [DONE]" not in received


async def test_usage_is_streamed_when_asked(http: httpx.AsyncClient) -> None:
    request = chat(True, stream_options={"include_usage": True})
    async with http.stream("POST", "/chat/completions", json=request) as response:
        chunks, _ = await read_stream(response)

    assert chunks[-1]["usage"]["completion_tokens"] == 6


async def test_embeddings_are_deterministic_unit_vectors_closer_for_shared_words(
    http: httpx.AsyncClient,
) -> None:
    texts = ["the red fox jumps", "the red fox sleeps", "quarterly tax filing"]
    first = (await http.post("/embeddings", json={"input": texts})).json()
    second = (await http.post("/embeddings", json={"input": texts})).json()

    vectors = [item["embedding"] for item in first["data"]]
    assert vectors == [item["embedding"] for item in second["data"]]
    assert all(math.isclose(sum(v * v for v in vector), 1.0) for vector in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


async def test_config_endpoint_changes_behaviour_and_refuses_unknown_settings(
    http: httpx.AsyncClient,
) -> None:
    accepted = await http.post("http://fake/fake/config", json={"reply": "ok"})
    refused = await http.post("http://fake/fake/config", json={"replly": "typo"})
    response = await http.post("/chat/completions", json=chat(False))

    assert accepted.status_code == 200
    assert refused.status_code == 400
    assert "replly" in refused.json()["error"]["message"]
    assert response.json()["choices"][0]["message"]["content"] == "ok"


async def test_models_lists_the_configured_model(http: httpx.AsyncClient) -> None:
    response = await http.get("/models")

    assert [model["id"] for model in response.json()["data"]] == ["fake-model"]
