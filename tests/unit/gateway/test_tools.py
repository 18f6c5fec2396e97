"""Tools through the OpenAI-compatible API: passed to a model set up for them, as the client
wrote them, and its calls passed back, streamed as OpenAI streams them; refused by name for a
model that is not; and moderated like the model's other words."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.openai_backend import FakeBackend
from tests.fakes.tools import WEATHER
from tests.unit.gateway.conftest import GatewayFactory

ASK = [{"role": "user", "content": "What is the weather in Lisbon?"}]
CALL = {"name": "get_weather", "arguments": '{"city": "Lisbon", "unit": "celsius"}'}


async def tools_gateway(gateway: GatewayFactory, fake_url: str, **settings: Any) -> Any:
    return await gateway(backend={"url": fake_url, "retries": 0, "tools": True}, **settings)


def chunks(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: {")
    ]


def assembled(stream: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The calls of a stream as a client adds up their deltas."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for choice in chunk.get("choices") or []:
            for call in choice["delta"].get("tool_calls") or []:
                into = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                into["id"] += call.get("id") or ""
                into["name"] += call.get("function", {}).get("name") or ""
                into["arguments"] += call.get("function", {}).get("arguments") or ""
    return calls


async def test_a_model_not_set_up_for_tools_refuses_them_by_name(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    client = await gateway()
    offered = await client.post("/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER]})
    # A conversation that used tools elsewhere is refused too: its model could not read it.
    replayed = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": CALL}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 degrees."},
            ]
        },
    )

    for refused in (offered, replayed):
        assert refused.status_code == 422
        assert refused.json()["error"]["param"] == "tools"
        assert "spec.model.tools.enabled" in refused.json()["error"]["message"]
    assert fake.requests == []


async def test_tools_and_the_calls_results_reach_the_model_as_the_client_wrote_them(
    gateway: GatewayFactory, fake: FakeBackend, fake_url: str
) -> None:
    client = await tools_gateway(gateway, fake_url, system_prompt="Be brief.")
    conversation = [
        *ASK,
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": CALL}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 degrees."},
    ]

    response = await client.post(
        "/v1/chat/completions",
        json={
            "messages": conversation,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        },
    )

    assert response.status_code == 200, response.text
    assert (
        response.json()["choices"][0]["message"]["content"] == "The tool said: Sunny, 21 degrees."
    )
    sent = fake.requests[-1]
    assert sent["tools"] == [WEATHER]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    # The assistant's own prompt leads; the client's turns follow, the call and its result too.
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, *conversation]


async def test_the_models_calls_come_back_whole_and_streamed_in_deltas(
    gateway: GatewayFactory, fake: FakeBackend, fake_url: str
) -> None:
    second = {"name": "get_time", "arguments": '{"city": "Lisbon"}'}
    fake.config.tool_calls = [CALL, second]
    client = await tools_gateway(gateway, fake_url)
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required"}

    whole = (await client.post("/v1/chat/completions", json=body)).json()
    streamed = chunks(
        (await client.post("/v1/chat/completions", json={**body, "stream": True})).text
    )

    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert [call["function"] for call in choice["message"]["tool_calls"]] == [CALL, second]
    calls = assembled(streamed)
    assert [(call["name"], call["arguments"]) for call in calls.values()] == [
        (CALL["name"], CALL["arguments"]),
        (second["name"], second["arguments"]),
    ]
    assert calls[0]["id"] == "call_0"
    # In pieces, as the engine sent them: not gathered into one chunk.
    assert (
        sum(bool(c["choices"] and c["choices"][0]["delta"].get("tool_calls")) for c in streamed) > 4
    )
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_call_whose_arguments_hold_a_blocked_term_is_refused_and_never_streamed(
    gateway: GatewayFactory, fake: FakeBackend, fake_url: str
) -> None:
    # The term spans the fake's 8-character argument chunks.
    fake.config.tool_calls = [{"name": "ship", "arguments": '{"cargo": "smuggling route maps"}'}]
    client = await tools_gateway(
        gateway, fake_url, moderation={"blocked_terms": ["smuggling route"], "refusal": "No."}
    )
    body = {"messages": ASK, "tools": [WEATHER]}

    whole = (await client.post("/v1/chat/completions", json=body)).json()
    text = (await client.post("/v1/chat/completions", json={**body, "stream": True})).text
    streamed = chunks(text)

    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "No."
    assert "tool_calls" not in choice["message"]
    assert assembled(streamed) == {}
    assert "smuggl" not in text and "cargo" not in text
    assert streamed[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert text.rstrip().endswith("data: [DONE]")


async def test_a_call_without_a_blocked_term_streams_whole_with_terms_set(
    gateway: GatewayFactory, fake: FakeBackend, fake_url: str
) -> None:
    fake.config.tool_calls = [CALL]
    client = await tools_gateway(gateway, fake_url, moderation={"blocked_terms": ["contraband"]})

    text = (
        await client.post(
            "/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER], "stream": True}
        )
    ).text

    calls = assembled(chunks(text))
    assert [(call["name"], call["arguments"]) for call in calls.values()] == [
        (CALL["name"], CALL["arguments"])
    ]
    assert chunks(text)[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_malformed_tool_messages_are_refused_naming_what_is_wrong(
    gateway: GatewayFactory, fake_url: str
) -> None:
    client = await tools_gateway(gateway, fake_url)
    cases = {
        "tool_call_id": [*ASK, {"role": "tool", "content": "Sunny."}],
        "content is required": [*ASK, {"role": "assistant"}],
        "tool_calls belong": [
            {**ASK[0], "tool_calls": [{"id": "c1", "type": "function", "function": CALL}]}
        ],
    }
    for said, messages in cases.items():
        response = await client.post("/v1/chat/completions", json={"messages": messages})
        assert response.status_code == 422, said
        assert said in response.json()["error"]["message"], response.json()
    named = await client.post(
        "/v1/chat/completions",
        json={"messages": ASK, "tools": [{"type": "function", "function": {"name": "a b"}}]},
    )
    assert named.status_code == 422
    assert named.json()["error"]["param"] == "tools[0].function.name"
