"""Real clients, unmodified, against the gateway in front of the real llama.cpp server: the
official OpenAI SDK (sync, async, streaming, and the exception each refusal raises), LangChain's
ChatOpenAI, and the requests an OpenAI-compatible chat UI such as Open WebUI makes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.testbed.process import free_port
from tests.testbed.servers import start_gateway

MODEL = "harbour-assistant"
KEY = "sk-tertulia-client-tests"
QUESTION = "Say hello to the harbour in one short sentence."
# Short answers keep the CPU model quick; temperature 0 makes runs comparable.
SETTINGS = {"MAX_TOKENS": "24", "TEMPERATURE": "0", "MODEL_NAME": MODEL}


def _keys(workdir: Path) -> Path:
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "webui").write_text(KEY)
    return keys


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, llama_url: str) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("client-gateway")
    settings = {
        **SETTINGS,
        "BACKEND__URL": llama_url,
        "API_KEYS_DIR": str(_keys(workdir)),
        "RATE_LIMIT__ENABLED": "false",
    }
    process, url = start_gateway(workdir, settings)
    yield url
    process.stop()


@pytest.fixture(scope="module")
def limited_gateway(
    tmp_path_factory: pytest.TempPathFactory, llama_url: str, redis_url: str
) -> Iterator[str]:
    """One request at once per user, one more every ten seconds: the first answer, on a busy
    machine, must not take long enough for the second request to find the next one."""
    workdir = tmp_path_factory.mktemp("limited-gateway")
    settings = {
        **SETTINGS,
        "BACKEND__URL": llama_url,
        "REDIS_URL": redis_url,
        "API_KEYS_DIR": str(_keys(workdir)),
        "RATE_LIMIT__REQUESTS_PER_MINUTE": "6",
        "RATE_LIMIT__BURST": "1",
    }
    process, url = start_gateway(workdir, settings, name="limited-gateway")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def gateway_without_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose model server is not there (nothing listens on its port)."""
    workdir = tmp_path_factory.mktemp("orphan-gateway")
    settings = {
        **SETTINGS,
        "BACKEND__URL": f"http://127.0.0.1:{free_port()}/v1",
        "BACKEND__RETRIES": "0",
        "API_KEYS_DIR": str(_keys(workdir)),
        "RATE_LIMIT__ENABLED": "false",
    }
    process, url = start_gateway(workdir, settings, name="orphan-gateway")
    yield url
    process.stop()


def _client(url: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=120, **options)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def test_the_sdk_lists_the_model_and_completes_a_chat(gateway: str) -> None:
    client = _client(gateway)

    models = [model.id for model in client.models.list()]
    model = client.models.retrieve(MODEL)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_completion_tokens=16
    )

    assert models == [MODEL]
    assert model.id == MODEL
    answer = completion.choices[0].message.content or ""
    assert _words(answer), f"the model's answer had no words: {answer!r}"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 16


def test_the_sdk_streams_with_the_parameters_chat_uis_send(gateway: str) -> None:
    client = _client(gateway)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": QUESTION},
        ],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=16,
        user="webui:ana",
        seed=7,
        temperature=0,
        top_p=0.9,
        n=1,
    )
    chunks = list(stream)

    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1, "the answer came in one piece, not streamed"
    assert _words("".join(pieces))
    # With include_usage, the last chunk carries the usage and no choices, as OpenAI sends it.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    # Every token the model generated was streamed, save the end-of-sequence token it stopped
    # on (counted, never shown).
    [finish] = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(pieces) + (finish == "stop")


def test_the_async_sdk_streams_and_completes(gateway: str) -> None:
    async def ask() -> tuple[list[str], str]:
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=KEY, timeout=120) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                max_completion_tokens=12,
            )
            pieces = [
                chunk.choices[0].delta.content
                async for chunk in stream
                if chunk.choices and chunk.choices[0].delta.content
            ]
            # One at a time, as a person asks.
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Name one thing a harbour has."}],
                max_completion_tokens=12,
            )
            return pieces, completion.choices[0].message.content or ""

    pieces, answer = asyncio.run(ask())

    assert len(pieces) > 1
    assert _words("".join(pieces))
    assert _words(answer)


def test_each_refusal_raises_the_sdks_own_exception(gateway: str) -> None:
    client = _client(gateway, max_retries=0)
    hello = [{"role": "user", "content": QUESTION}]

    with pytest.raises(openai.AuthenticationError) as unauthorised:
        openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    with pytest.raises(openai.UnprocessableEntityError) as tools:
        client.chat.completions.create(
            model=MODEL,
            messages=hello,
            tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        )
    with pytest.raises(openai.UnprocessableEntityError) as temperature:
        client.chat.completions.create(model=MODEL, messages=hello, temperature=7)

    assert unauthorised.value.type == "authentication_error"
    assert missing.value.code == "model_not_found"
    assert MODEL in missing.value.message
    # Refused by name, with the reason: not silently dropped.
    assert tools.value.param == "tools"
    assert "spec.model.tools.enabled" in tools.value.message
    assert temperature.value.param == "temperature"
    assert temperature.value.type == "invalid_request_error"


def test_a_rate_limit_raises_with_retry_after_and_the_sdk_waits_it_out(
    limited_gateway: str,
) -> None:
    hello = [{"role": "user", "content": QUESTION}]
    impatient = _client(limited_gateway, max_retries=0)
    patient = _client(limited_gateway, max_retries=3)

    impatient.chat.completions.create(model=MODEL, messages=hello, max_completion_tokens=4)
    with pytest.raises(openai.RateLimitError) as limited:
        impatient.chat.completions.create(model=MODEL, messages=hello, max_completion_tokens=4)
    waited = patient.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=hello,
        max_completion_tokens=4,
    )

    assert limited.value.code == "rate_limited"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 10
    # The SDK read Retry-After, waited, and the retry was answered.
    assert waited.retries_taken >= 1
    assert waited.parse().choices[0].message.content is not None


def test_a_missing_model_server_raises_a_503_with_retry_after(gateway_without_model: str) -> None:
    client = _client(gateway_without_model, max_retries=0)

    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
        )

    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "backend_unavailable"
    assert int(unavailable.value.response.headers["retry-after"]) >= 1


def test_langchain_chat_openai_invokes_and_streams(gateway: str) -> None:
    chat = ChatOpenAI(
        model=MODEL,
        base_url=f"{gateway}/v1",
        api_key=KEY,
        max_completion_tokens=16,
        temperature=0,
        stream_usage=True,
        timeout=120,
    )

    answer = chat.invoke(QUESTION)
    chunks = list(chat.stream([("system", "You are brief."), ("human", QUESTION)]))

    assert isinstance(answer.content, str) and _words(answer.content)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    texts = [chunk.content for chunk in chunks if chunk.content]
    assert len(texts) > 1
    merged = sum(chunks[1:], chunks[0])
    assert isinstance(merged, AIMessageChunk)
    assert merged.usage_metadata is not None
    # Every token streamed, save the end-of-sequence token the model stopped on.
    finish = merged.response_metadata["finish_reason"]
    assert finish in ("stop", "length")
    assert merged.usage_metadata["output_tokens"] == len(texts) + (finish == "stop")


def test_an_open_webui_connection_check_and_chat(gateway: str) -> None:
    """What Open WebUI does with an OpenAI connection: list the models with the key as a
    bearer token, then stream a chat with the model it listed."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    listed = httpx.get(f"{gateway}/v1/models", headers=headers, timeout=10)
    body = {
        "model": listed.json()["data"][0]["id"],
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
    }
    with httpx.stream(
        "POST", f"{gateway}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]

    assert listed.status_code == 200
    assert listed.json()["object"] == "list"
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert len(lines) > 3
