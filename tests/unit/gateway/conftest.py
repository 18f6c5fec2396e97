"""A gateway app in front of the fake backend, both in this process and event loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tertulia.gateway.app import create_app
from tertulia.gateway.settings import GatewaySettings
from tests.fakes.openai_backend import FakeBackend, FakeBackendConfig, serving

GatewayFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(FakeBackendConfig())


@pytest.fixture
async def fake_url(fake: FakeBackend) -> AsyncIterator[str]:
    """The fake backend served on a free port; its /v1 URL."""
    async with serving(fake) as url:
        yield url


@pytest.fixture
async def gateway(fake_url: str) -> AsyncIterator[GatewayFactory]:
    """Start a gateway: `await gateway(memory={"max_turns": 2}, ...)` sets its settings."""
    async with AsyncExitStack() as stack:

        async def build(**settings: Any) -> httpx.AsyncClient:
            settings.setdefault("backend", {"url": fake_url, "retries": 0})
            app = create_app(GatewaySettings(**settings))
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
            )

        yield build


def write_keys(directory: Path, keys: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for identity, key in keys.items():
        (directory / identity).write_text(key + "\n")
    return directory


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a server-sent event stream."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events
