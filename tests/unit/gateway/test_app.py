"""The gateway's HTTP API in front of the fake backend: answers, memory, refusals, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from tertulia.gateway.app import create_app, create_metrics_app
from tertulia.gateway.settings import GatewaySettings
from tests.fakes.openai_backend import FakeBackend
from tests.unit.gateway.conftest import GatewayFactory, parse_sse, write_keys


async def test_chat_answers_and_the_next_message_carries_the_history(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    client = await gateway(system_prompt="Be kind.")

    first = await client.post("/chat", json={"message": "hello", "conversation_id": "c1"})
    second = await client.post("/chat", json={"message": "again", "conversation_id": "c1"})

    assert first.status_code == 200
    assert first.json()["response"] == "You said: hello"
    assert second.json()["conversation_id"] == "c1"
    assert fake.requests[-1]["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "You said: hello"},
        {"role": "user", "content": "again"},
    ]


async def test_a_chat_without_conversation_id_starts_a_new_one(gateway: GatewayFactory) -> None:
    client = await gateway()
    first = (await client.post("/chat", json={"message": "a"})).json()["conversation_id"]
    second = (await client.post("/chat", json={"message": "b"})).json()["conversation_id"]
    assert first != second


async def test_chat_stream_sends_meta_tokens_and_done_with_the_whole_reply(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    fake.config.reply = "One two three four."
    client = await gateway()

    response = await client.post("/chat/stream", json={"message": "count", "conversation_id": "s1"})

    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert events[0] == ("meta", {"conversation_id": "s1", "sources": []})
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert len(tokens) == 4
    kind, done = events[-1]
    assert kind == "done"
    assert done["response"] == "".join(tokens) == "One two three four."
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 4
    history = (await client.get("/conversations/s1")).json()["turns"]
    assert history[-1] == {"role": "assistant", "content": "One two three four."}


async def test_conversations_are_visible_and_deletable_by_their_owner_only(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = write_keys(tmp_path / "keys", {"bots": "key-bots", "app": "key-app"})
    client = await gateway(api_keys_dir=keys)
    bots = {"Authorization": "Bearer key-bots"}
    web = {"X-API-Key": "key-app"}
    await client.post(
        "/chat", json={"message": "mine", "conversation_id": "c", "user": "ana"}, headers=bots
    )

    assert (
        await client.get("/conversations/c", params={"user": "ana"}, headers=bots)
    ).status_code == 200
    assert (
        await client.get("/conversations/c", params={"user": "ana"}, headers=web)
    ).status_code == 404
    assert (
        await client.get("/conversations/c", params={"user": "bob"}, headers=bots)
    ).status_code == 404
    assert (
        await client.delete("/conversations/c", params={"user": "ana"}, headers=web)
    ).status_code == 404

    deleted = await client.delete("/conversations/c", params={"user": "ana"}, headers=bots)
    assert deleted.status_code == 204
    assert (
        await client.get("/conversations/c", params={"user": "ana"}, headers=bots)
    ).status_code == 404


async def test_an_event_is_claimed_once_per_api_key_within_its_window(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = write_keys(tmp_path / "keys", {"slack-bot": "key-a", "other-bot": "key-b"})
    client = await gateway(api_keys_dir=keys)
    first = {"Authorization": "Bearer key-a"}
    other = {"Authorization": "Bearer key-b"}

    async def claim(headers: dict[str, str], event: str = "slack:Ev1") -> bool:
        response = await client.post("/events", json={"id": event}, headers=headers)
        assert response.status_code == 200, response.text
        return bool(response.json()["first"])

    assert await claim(first)
    assert not await claim(first)
    assert await claim(first, "slack:Ev2")
    # Another key's claims are its own: one bot cannot swallow another's events.
    assert await claim(other)
    assert (await client.post("/events", json={"id": ""}, headers=first)).status_code == 422
    assert (await client.post("/events", json={"id": "slack:Ev3"})).status_code == 401


async def test_a_missing_key_is_refused_with_401(gateway: GatewayFactory, tmp_path: Path) -> None:
    client = await gateway(api_keys_dir=write_keys(tmp_path / "keys", {"bots": "k"}))

    response = await client.post("/chat", json={"message": "hi"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


async def test_oversized_message_and_body_get_413_with_the_limit(gateway: GatewayFactory) -> None:
    client = await gateway(limits={"max_message_chars": 10, "max_body_bytes": 2048})

    long_message = await client.post("/chat", json={"message": "x" * 11})
    huge_body = await client.post("/chat", json={"message": "hi", "context": "y" * 4000})

    assert long_message.status_code == 413
    assert "the limit is 10" in long_message.json()["error"]["message"]
    assert huge_body.status_code == 413
    assert "2048 bytes" in huge_body.json()["error"]["message"]


async def test_malformed_requests_get_422_naming_the_problem(gateway: GatewayFactory) -> None:
    client = await gateway()

    control = await client.post("/chat", json={"message": "bell\x07"})
    temperature = await client.post("/chat", json={"message": "hi", "temperature": 9})
    unknown = await client.post("/chat", json={"message": "hi", "mesage": "typo"})
    not_json = await client.post(
        "/chat", content=b"{", headers={"content-type": "application/json"}
    )

    assert control.status_code == 422
    assert "U+0007" in control.json()["error"]["message"]
    assert temperature.status_code == 422
    assert "temperature" in temperature.text
    assert unknown.status_code == 422
    assert "mesage" in unknown.text
    assert not_json.status_code == 422


async def test_past_the_burst_requests_get_429_with_retry_after(gateway: GatewayFactory) -> None:
    client = await gateway(rate_limit={"requests_per_minute": 6, "burst": 2})

    statuses = [
        (await client.post("/chat", json={"message": "hi", "user": "u1"})).status_code
        for _ in range(3)
    ]
    refused = await client.post("/chat", json={"message": "hi", "user": "u1"})
    other_user = await client.post("/chat", json={"message": "hi", "user": "u2"})

    assert statuses == [200, 200, 429]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert "this user" in refused.json()["error"]["message"]
    assert other_user.status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'tertulia_gateway_rate_limited_total{scope="user"} 2.0' in metrics


async def test_blocked_input_gets_400_and_never_reaches_the_model(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    client = await gateway(moderation={"blocked_terms": ["contraband"]})

    response = await client.post("/chat", json={"message": "Sell me CONTRABAND"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_blocked"
    assert fake.requests == []


async def test_blocked_output_is_replaced_by_the_refusal(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    fake.config.reply = "Here is some contraband for you."
    client = await gateway(moderation={"blocked_terms": ["contraband"], "refusal": "No."})

    whole = await client.post("/chat", json={"message": "hi"})
    streamed = parse_sse((await client.post("/chat/stream", json={"message": "hi"})).text)

    assert whole.json()["response"] == "No."
    assert whole.json()["finish_reason"] == "content_filter"
    shown = "".join(data["text"] for kind, data in streamed if kind == "token")
    assert "contraband" not in shown
    assert streamed[-1][1]["response"] == "No."
    assert streamed[-1][1]["finish_reason"] == "content_filter"


async def test_openai_models_and_non_streaming_completion(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    client = await gateway(model_name="harbour-bot", system_prompt="Be kind.")

    models = await client.get("/v1/models")
    completion = await client.post(
        "/v1/chat/completions",
        json={"model": "harbour-bot", "messages": [{"role": "user", "content": "hi"}], "seed": 7},
    )
    unknown = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "logprobz": True},
    )

    assert [model["id"] for model in models.json()["data"]] == ["harbour-bot"]
    assert completion.json()["choices"][0]["message"]["content"] == "You said: hi"
    sent = fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be kind."}
    assert sent["model"] == "fake-model"
    assert sent["seed"] == 7
    assert unknown.status_code == 422
    assert "logprobz" in unknown.text


async def test_a_developer_message_goes_upstream_as_a_system_message(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    client = await gateway(system_prompt="Be kind.")
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]

    answered = await client.post("/v1/chat/completions", json={"messages": messages})

    assert answered.status_code == 200
    assert fake.requests[-1]["messages"][:2] == [
        {"role": "system", "content": "Be kind."},
        {"role": "system", "content": "Be brief."},
    ]


async def test_openai_stream_is_passed_through_with_usage_only_when_asked(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    plain = (await client.post("/v1/chat/completions", json=body)).text
    with_usage = (
        await client.post(
            "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}
        )
    ).text

    assert plain.rstrip().endswith("data: [DONE]")
    assert '"usage"' not in plain
    assert '"usage"' in with_usage
    assert "You" in plain


async def test_openai_refusals_have_openais_error_shape_naming_the_parameter(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(model_name="harbour-bot")
    hello = [{"role": "user", "content": "hi"}]

    tools = await client.post(
        "/v1/chat/completions", json={"messages": hello, "tools": [], "tool_choice": "auto"}
    )
    nested = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": [{"type": "x"}]}]}
    )
    model = await client.get("/v1/models/harbour-bot")
    other = await client.get("/v1/models/gpt-4o")
    no_route = await client.post("/v1/embeddings", json={"input": "hi"})

    assert tools.status_code == 422
    assert tools.json()["error"] == {
        "code": "invalid_input",
        "message": "tools: this ChatBot's model is not set up to call tools "
        "(spec.model.tools.enabled starts its engine with tool calling)",
        "type": "invalid_request_error",
        "param": "tools",
    }
    assert nested.json()["error"]["param"].startswith("messages[0].content")
    assert model.json()["id"] == "harbour-bot"
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "model_not_found"
    assert no_route.status_code == 404
    assert no_route.json()["error"]["type"] == "not_found_error"


async def test_a_stream_gets_the_usage_chunk_it_asked_for_when_the_engine_sends_none(
    gateway: GatewayFactory, fake: FakeBackend
) -> None:
    fake.config.stream_usage = False
    client = await gateway()
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    events = [
        line.removeprefix("data: ")
        for line in (await client.post("/v1/chat/completions", json=body)).text.splitlines()
        if line.startswith("data: ")
    ]

    chunks = [json.loads(event) for event in events[:-1]]
    contents = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert events[-1] == "[DONE]"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(contents)


@pytest.mark.parametrize(
    ("backend_status", "status", "code"),
    [
        (503, 503, "backend_unavailable"),
        (500, 502, "backend_error"),
        (400, 400, "backend_rejected"),
    ],
)
async def test_backend_errors_map_to_clear_statuses(
    gateway: GatewayFactory, fake: FakeBackend, backend_status: int, status: int, code: str
) -> None:
    fake.config.fail_status = backend_status
    client = await gateway()

    response = await client.post("/chat", json={"message": "hi"})
    streamed = await client.post("/chat/stream", json={"message": "hi"})

    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert streamed.status_code == status
    if status == 503:
        assert response.headers["retry-after"] == "5"


async def test_the_models_state_is_told_to_a_caller_with_a_key(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await gateway(api_keys_dir=write_keys(tmp_path / "keys", {"slack": "k"}))

    unknown = await client.get("/model/state")
    known = await client.get("/model/state", headers={"Authorization": "Bearer k"})

    assert unknown.status_code == 401
    # Without autoscaling the model never sleeps.
    assert (known.status_code, known.json()) == (200, {"asleep": False})


async def test_readyz_reports_each_dependency(gateway: GatewayFactory, fake: FakeBackend) -> None:
    client = await gateway()

    ready = await client.get("/readyz")
    fake.config.fail_status = 503
    unready = await client.get("/readyz")

    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"backend": {"status": "up"}, "store": {"status": "up", "kind": "in-process"}},
    }
    assert unready.status_code == 503
    assert unready.json()["status"] == "unavailable"
    assert unready.json()["checks"]["backend"]["status"] == "down"
    assert "not ready" in unready.json()["checks"]["backend"]["reason"]


async def test_stats_and_metrics_count_requests_by_route_and_status(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    await client.post("/chat", json={"message": "hi"})
    await client.post("/chat", json={"message": "bell\x07"})

    stats = (await client.get("/stats")).json()
    metrics = (await client.get("/metrics")).text

    assert stats["requests"] == 2
    assert stats["errors"] == 0
    assert stats["success_rate"] == 1.0
    assert stats["mean_latency_seconds"] > 0
    assert 'tertulia_gateway_requests_total{route="/chat",status="200"} 1.0' in metrics
    assert 'tertulia_gateway_requests_total{route="/chat",status="422"} 1.0' in metrics
    assert 'tertulia_gateway_tokens_total{direction="completion"} 3.0' in metrics
    assert "tertulia_gateway_time_to_first_token_seconds_count 1.0" in metrics


async def test_request_id_is_kept_when_given_and_made_when_not(gateway: GatewayFactory) -> None:
    client = await gateway()
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await client.get("/healthz")
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32


async def test_message_text_stays_out_of_the_logs(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway()
    with caplog.at_level(logging.DEBUG):
        await client.post("/chat", json={"message": "my secret diagnosis"})
    logged = " ".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "secret diagnosis" not in logged
    assert "<19 chars>" in logged


async def test_with_a_metrics_port_the_public_app_serves_no_metrics_stats_or_docs(
    fake_url: str,
) -> None:
    settings = GatewaySettings(
        backend={"url": fake_url, "retries": 0}, metrics_port=9090, api_docs=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as public:
            assert (await public.post("/chat", json={"message": "Hi"})).status_code == 200
            for path in ("/metrics", "/stats", "/docs", "/redoc", "/openapi.json"):
                assert (await public.get(path)).status_code == 404, path
        metrics_transport = httpx.ASGITransport(app=create_metrics_app(app))
        async with httpx.AsyncClient(transport=metrics_transport, base_url="http://m") as private:
            metrics = (await private.get("/metrics")).text
            stats = (await private.get("/stats")).json()
    # The metrics port counts what the public one served.
    assert 'tertulia_gateway_requests_total{route="/chat",status="200"} 1.0' in metrics
    assert stats["requests"] >= 1


async def test_a_bots_key_acts_only_for_its_platforms_users(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = write_keys(tmp_path / "keys", {"slack": "key-slack", "telegram": "key-telegram"})
    client = await gateway(
        api_keys_dir=keys, user_prefixes={"slack": "slack:", "telegram": "telegram:"}
    )
    slack = {"Authorization": "Bearer key-slack"}
    telegram = {"Authorization": "Bearer key-telegram"}
    said = await client.post(
        "/chat",
        json={"message": "My boat is the Gaviota.", "conversation_id": "c1", "user": "telegram:7"},
        headers=telegram,
    )
    assert said.status_code == 200
    # The Slack bot's key cannot act for a Telegram user: not chat, not read, not delete.
    for request in (
        client.post("/chat", json={"message": "Hi", "user": "telegram:7"}, headers=slack),
        client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "user": "t"},
            headers=slack,
        ),
        client.get("/conversations/c1", params={"user": "telegram:7"}, headers=slack),
        client.delete("/conversations/c1", params={"user": "telegram:7"}, headers=slack),
    ):
        refused = await request
        assert refused.status_code == 403
        assert "'slack:...'" in refused.json()["error"]["message"]
    # Nor with no user at all, which would act as the key itself.
    assert (await client.post("/chat", json={"message": "Hi"}, headers=slack)).status_code == 403
    mine = await client.get("/conversations/c1", params={"user": "telegram:7"}, headers=telegram)
    assert mine.json()["turns"][0]["content"] == "My boat is the Gaviota."
    assert (
        await client.post("/chat", json={"message": "Hi", "user": "slack:U1"}, headers=slack)
    ).status_code == 200
