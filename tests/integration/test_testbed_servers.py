"""The test bed's Redis and llama.cpp servers are real and answer as their clients expect."""

from __future__ import annotations

import json

import httpx
import redis

from tertulia.operator.render.images import REDIS
from tests.testbed.servers import LLAMA_MODEL_ALIAS


def test_redis_round_trip_with_expiry(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    connection.set("testbed:greeting", "hola", ex=60)

    assert connection.get("testbed:greeting") == "hola"
    assert 0 < connection.ttl("testbed:greeting") <= 60
    # The line the operator's image pins (redis:7.4.11-alpine: 7.4), which the real node's
    # stand-in runs too: the Sentinel handover's commands behave as in production.
    pinned = REDIS.split(":")[1].split("-")[0].split(".")[:2]
    assert connection.info("server")["redis_version"].split(".")[:2] == pinned


def test_llama_server_streams_a_chat_completion_of_real_tokens(llama_url: str) -> None:
    models = httpx.get(f"{llama_url}/models", timeout=10).json()
    assert LLAMA_MODEL_ALIAS in [model["id"] for model in models["data"]]

    request = {
        "model": LLAMA_MODEL_ALIAS,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 24,
        "temperature": 0.0,
        "stream": True,
    }
    deltas: list[str] = []
    finish_reasons: list[str] = []
    saw_done = False
    with httpx.stream(
        "POST", f"{llama_url}/chat/completions", json=request, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                saw_done = True
                break
            choice = json.loads(data)["choices"][0]
            if choice["delta"].get("content"):
                deltas.append(choice["delta"]["content"])
            if choice.get("finish_reason"):
                finish_reasons.append(choice["finish_reason"])

    assert saw_done
    assert len(deltas) >= 2, "a stream of one chunk is not streaming"
    assert "".join(deltas).strip(), "the model produced no text"
    assert finish_reasons[-1] in ("stop", "length")
