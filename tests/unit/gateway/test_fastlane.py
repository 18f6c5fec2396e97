"""The fast lane answers exactly as FastAPI's dispatch would, and takes only valid requests."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from tertulia.gateway.app import create_app
from tertulia.gateway.fastlane import FastLane, post_route
from tertulia.gateway.routes import chat
from tertulia.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import write_keys

KEY = {"Authorization": "Bearer key-bots"}
HELLO = [{"role": "user", "content": "hi"}]

# (path, body or raw bytes, headers): answers, refusals by the pipeline, and bodies that
# FastAPI refuses before the endpoint runs.
REQUESTS: list[tuple[str, Any, dict[str, str]]] = [
    ("/chat", {"message": "hello", "conversation_id": "c1"}, KEY),
    ("/chat", {"message": "again", "conversation_id": "c1", "temperature": 0.5}, KEY),
    ("/chat", {"message": "where is the contraband?", "conversation_id": "c2"}, KEY),
    ("/chat", {"message": "x" * 200, "conversation_id": "c3"}, KEY),
    ("/chat", {"message": "hello", "conversation_id": "c1"}, {"Authorization": "Bearer no"}),
    ("/chat", {"message": "hello", "conversation_id": "c1"}, {}),
    ("/chat", {"message": "hi", "mesage": "typo"}, KEY),
    ("/chat", {"message": "hi", "temperature": 9}, KEY),
    ("/chat", {"conversation_id": "c1"}, KEY),
    ("/chat", b"{", KEY),
    ("/chat", b"", KEY),
    ("/chat", b'{"message": "hi", "conversation_id": "c4"}', {**KEY, "content-type": "text/plain"}),
    ("/chat/stream", {"message": "stream it", "conversation_id": "c5"}, KEY),
    ("/chat/stream", {"message": "hi", "filters": 3}, KEY),
    ("/v1/chat/completions", {"messages": HELLO}, KEY),
    ("/v1/chat/completions", {"messages": HELLO, "stream": True}, KEY),
    ("/v1/chat/completions", {"messages": HELLO, "tools": []}, KEY),
    ("/v1/chat/completions", {"messages": []}, KEY),
    ("/v1/chat/completions", {"messages": HELLO, "n": 2}, KEY),
]


async def answers(app_options: dict[str, Any], settings: GatewaySettings) -> list[Any]:
    async with AsyncExitStack() as stack:
        app = create_app(settings, **app_options)
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        )
        seen = []
        for path, body, headers in REQUESTS:
            if isinstance(body, bytes):
                response = await client.post(path, content=body, headers=headers)
            else:
                response = await client.post(path, json=body, headers=headers)
            kept = {
                name: value for name, value in response.headers.items() if name != "x-request-id"
            }
            # The fake backend stamps its answers with the time.
            text = re.sub(r'"created": ?\d+', '"created":0', response.text)
            seen.append((path, response.status_code, kept, text))
        metrics = (await client.get("/metrics")).text
        seen.append(
            sorted(
                line.split(" ")[0]
                for line in metrics.splitlines()
                if line.startswith("tertulia_gateway_requests_total{")
            )
        )
        return seen


async def test_every_answer_and_refusal_is_the_same_with_and_without_the_lane(
    fake_url: str, tmp_path: Path
) -> None:
    settings = GatewaySettings(
        backend={"url": fake_url, "retries": 0},
        api_keys_dir=write_keys(tmp_path / "keys", {"bots": "key-bots"}),
        limits={"max_message_chars": 100},
        moderation={"blocked_terms": ["contraband"]},
        rate_limit={"requests_per_minute": 6000, "burst": 100},
    )

    fast = await answers({}, settings)
    plain = await answers({"fast_lane": False}, settings)

    assert fast == plain
    statuses = [status for _, status, _, _ in fast[:-1]]
    assert statuses == [200, 200, 400, 413, 401, 401, *[422] * 6, 200, 422, 200, 200, 422, 422, 422]


class Fallback:
    """The app behind the lane, recording what reaches it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message["body"]
            more = message["more_body"]
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(lane: FastLane, body: bytes, content_type: bytes = b"application/json") -> int:
    class App:
        class state:  # noqa: N801 - the shape of Starlette's app.state
            services = None

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/chat",
        "headers": [(b"content-type", content_type)],
        "app": App,
    }
    chunks = [body[:3], body[3:]]

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await lane(scope, receive, send)
    except AttributeError:  # no services: the lane took the request
        return 0
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"message": "hi", "temprature": 1}', b"application/json"),
        (b'{"message": "hi"', b"application/json"),
        (b'{"message": "hi"}', b"text/plain"),
        (b'{"message": "hi"}', b"multipart/form-data; boundary=x"),
    ],
)
async def test_what_fastapi_would_refuse_goes_to_fastapi_with_its_body(
    body: bytes, content_type: bytes
) -> None:
    fallback = Fallback()
    lane = FastLane(fallback, routes=[post_route(chat.router, "/chat")])

    assert await call(lane, body, content_type) == 599
    assert fallback.bodies == [body]


@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8"])
async def test_a_valid_request_is_taken_by_the_lane(content_type: bytes) -> None:
    fallback = Fallback()
    lane = FastLane(fallback, routes=[post_route(chat.router, "/chat")])

    assert await call(lane, b'{"message": "hi"}', content_type) == 0
    assert fallback.bodies == []
