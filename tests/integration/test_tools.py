"""Tool calling through the gateway with real clients, unmodified: the official OpenAI SDK
(whole and streamed, and the conversation sent back with the tool's result) and LangChain's
`bind_tools`, against a gateway whose model is set up for tools. The calls are the scripted
backend's (tests/fakes/openai_backend.py), so what each client makes of them is checked
exactly; what the model server was sent is read back from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.fakes.tools import WEATHER as WEATHER_TOOL
from tests.testbed.servers import start_fake_backend, start_gateway

MODEL = "harbour-assistant"
KEY = "sk-tertulia-tool-tests"
WEATHER: ChatCompletionFunctionToolParam = WEATHER_TOOL  # type: ignore[assignment]
CALL = {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Lisbon?"}
]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_fake_backend(tmp_path_factory.mktemp("tool-backend"))
    base = url.removesuffix("/v1")
    httpx.post(f"{base}/fake/config", json={"tool_calls": [CALL]}, timeout=10).raise_for_status()
    yield base
    process.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("tool-gateway")
    keys = workdir / "keys"
    keys.mkdir()
    (keys / "tools").write_text(KEY)
    settings = {
        "MODEL_NAME": MODEL,
        "BACKEND__URL": f"{backend}/v1",
        "BACKEND__TOOLS": "true",
        "API_KEYS_DIR": str(keys),
        "RATE_LIMIT__ENABLED": "false",
    }
    process, url = start_gateway(workdir, settings)
    yield url
    process.stop()


def last_request(backend: str) -> dict[str, Any]:
    requests: list[dict[str, Any]] = httpx.get(f"{backend}/fake/requests", timeout=10).json()[
        "requests"
    ]
    return requests[-1]


def test_the_sdk_gets_the_call_and_answers_with_the_tools_result(
    gateway: str, backend: str
) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)

    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    (call,) = first.choices[0].message.tool_calls or []
    offered = last_request(backend)
    asked: ChatCompletionMessageParam = first.choices[0].message.model_dump(exclude_none=True)  # type: ignore[assignment]
    result = client.chat.completions.create(
        model=MODEL,
        messages=[
            *ASK,
            asked,
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
        ],
        tools=[WEATHER],
    )

    assert first.choices[0].finish_reason == "tool_calls"
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Lisbon"},
    )
    assert offered["tools"] == [WEATHER]
    assert result.choices[0].message.content == "The tool said: Sunny, 21 degrees."
    # The call went back to the model as the SDK wrote it, and the result after it.
    sent = last_request(backend)["messages"]
    assert sent[-2]["tool_calls"][0]["function"] == CALL
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}


def test_the_sdk_streams_the_call_in_deltas(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
    )
    name, arguments, pieces, finish = "", "", 0, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                pieces += 1
                name += (delta.function and delta.function.name) or ""
                arguments += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish

    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Lisbon"})
    assert pieces > 1
    assert finish == "tool_calls"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


def test_langchain_bind_tools_invokes_and_streams_the_call(gateway: str, backend: str) -> None:
    chat = ChatOpenAI(model=MODEL, base_url=f"{gateway}/v1", api_key=KEY, timeout=60)
    bound = chat.bind_tools([get_weather])

    answer = bound.invoke("What is the weather in Lisbon?")
    offered = last_request(backend)["tools"]
    chunks = list(bound.stream("What is the weather in Lisbon?"))

    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Lisbon"}, "id": "call_0", "type": "tool_call"}
    ]
    assert [item["function"]["name"] for item in offered] == ["get_weather"]
    merged = sum(chunks[1:], chunks[0])
    assert isinstance(merged, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        ("get_weather", {"city": "Lisbon"})
    ]


def test_a_gateway_whose_model_has_no_tools_refuses_bind_tools_by_name(
    tmp_path: Path, backend: str
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "tools").write_text(KEY)
    settings = {"BACKEND__URL": f"{backend}/v1", "API_KEYS_DIR": str(keys), "MODEL_NAME": MODEL}
    process, url = start_gateway(tmp_path, settings, name="gateway-without-tools")
    try:
        chat = ChatOpenAI(model=MODEL, base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            chat.bind_tools([get_weather]).invoke("What is the weather in Lisbon?")
    finally:
        process.stop()

    assert refused.value.param == "tools"
    assert "spec.model.tools.enabled" in refused.value.message
