"""The drain SIGTERM starts: readiness fails at once, answers go on, clients are asked to
close their connections, and the server stops listening only after the delay."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tertulia.gateway.app import create_app
from tertulia.gateway.drain import Drain, DrainingServer
from tertulia.gateway.settings import GatewaySettings


@pytest.fixture
async def app(fake_url: str) -> AsyncIterator[FastAPI]:
    app = create_app(GatewaySettings(backend={"url": fake_url, "retries": 0}))
    async with app.router.lifespan_context(app):
        yield app


async def test_a_draining_gateway_fails_readiness_and_closes_connections_but_still_answers(
    app: FastAPI,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        before = await client.get("/readyz")
        chat_before = await client.post("/chat", json={"message": "hi"})
        app.state.drain.start()
        after = await client.get("/readyz")
        chat_after = await client.post("/chat", json={"message": "hi"})

    assert before.status_code == 200
    assert "connection" not in chat_before.headers
    assert after.status_code == 503
    assert after.json()["status"] == "draining"
    assert chat_after.status_code == 200
    assert chat_after.json()["response"] == "You said: hi"
    assert chat_after.headers["connection"] == "close"


def server(delay: float) -> DrainingServer:
    return DrainingServer(uvicorn.Config(FastAPI()), Drain(), delay)


async def test_the_first_stop_signal_drains_and_the_server_stops_after_the_delay() -> None:
    draining = server(delay=3600)
    draining.handle_exit(signal.SIGTERM, None)

    assert draining.drain.draining
    assert not draining.should_exit
    assert not await draining.on_tick(1)  # within the delay: still serving

    stopping = server(delay=0)
    stopping.handle_exit(signal.SIGTERM, None)
    assert await stopping.on_tick(1)  # past it: uvicorn's shutdown begins


async def test_a_second_signal_stops_at_once_and_a_second_ctrl_c_quits() -> None:
    twice = server(delay=3600)
    twice.handle_exit(signal.SIGTERM, None)
    twice.handle_exit(signal.SIGTERM, None)
    assert await twice.on_tick(1)
    assert not twice.force_exit

    interrupted = server(delay=3600)
    interrupted.handle_exit(signal.SIGINT, None)
    interrupted.handle_exit(signal.SIGINT, None)
    interrupted.handle_exit(signal.SIGINT, None)
    assert interrupted.force_exit
