"""The upstream stream of a streamed chat is closed however the client goes: even when the
server cannot send the response's first byte (an ASGI 2.4 server raises OSError then), the
backend stops generating."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from tertulia.gateway.app import create_app
from tertulia.gateway.settings import GatewaySettings
from tests.fakes.openai_backend import FakeBackend, FakeBackendConfig, serving


@pytest.mark.parametrize("path", ["/chat/stream", "/v1/chat/completions"])
async def test_a_client_gone_before_the_first_byte_closes_the_upstream_stream(path: str) -> None:
    fake = FakeBackend(FakeBackendConfig(reply=" ".join(["wave"] * 400), token_delay=0.01))
    async with serving(fake) as url:
        app = create_app(GatewaySettings(backend={"url": url, "retries": 0}))
        async with app.router.lifespan_context(app):
            body: dict[str, Any] = {"message": "hi"}
            if path != "/chat/stream":
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                body["stream"] = True
            raw = json.dumps(body).encode()
            messages = [{"type": "http.request", "body": raw, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    raise OSError("the client has gone")

            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json"), (b"host", b"gateway")],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8080),
            }
            with pytest.raises(ClientDisconnect):
                await app(scope, receive, send)
            for _ in range(100):
                if fake.streams_cancelled:
                    break
                await asyncio.sleep(0.05)
            assert fake.streams_cancelled == 1, "the backend kept generating for a gone client"
