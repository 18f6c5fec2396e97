"""What every bot process runs beside its platform: the adapter's clients, and an HTTP
server for probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tertulia.bots.adapter import Adapter
from tertulia.bots.dedup import Deduplicator
from tertulia.bots.metrics import BotMetrics
from tertulia.bots.settings import BotSettings
from tertulia.common.gateway_client import GatewayClient, read_key
from tertulia.common.logging import configure_logging

logger = logging.getLogger(__name__)

# A platform module's entry point: runs the bot until cancelled.
Serve = Callable[["BotRuntime"], Coroutine[Any, Any, None]]


class BotRuntime:
    def __init__(self, platform: str, settings: BotSettings) -> None:
        self.platform = platform
        self.settings = settings
        self.metrics = BotMetrics()
        self.gateway = GatewayClient(settings.gateway_url, read_key(settings.gateway_key_file))
        self.adapter = Adapter(
            self.gateway,
            # Redelivered events are claimed at the gateway, which every replica shares.
            Deduplicator(self.gateway),
            self.metrics,
            stream_interval=settings.stream_interval,
            waiting_notice_after=settings.waiting_notice_seconds,
        )
        # Set by the platform module once it is connected and receiving events.
        self.connected = False

    def health_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self.connected:
            return web.json_response(
                {"status": "connecting", "platform": self.platform}, status=503
            )
        return web.json_response({"status": "ready", "platform": self.platform})

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def aclose(self) -> None:
        await self.gateway.aclose()


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run_bot(platform: str, serve: Serve) -> None:
    """Run `serve` for `platform` until SIGTERM or Ctrl-C, with the health server beside it."""
    settings = BotSettings()
    configure_logging(settings.log_level, log_content=settings.log_content)
    asyncio.run(_main(platform, settings, serve))


async def _main(platform: str, settings: BotSettings, serve: Serve) -> None:
    runtime = BotRuntime(platform, settings)
    health = await serve_app(runtime.health_app(), settings.health_host, settings.health_port)
    task = asyncio.create_task(serve(runtime))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    logger.info("bot starting", extra={"platform": platform, "mode": settings.mode})
    try:
        await task
    except asyncio.CancelledError:
        logger.info("bot stopping", extra={"platform": platform})
    finally:
        with contextlib.suppress(Exception):
            await runtime.aclose()
        await health.cleanup()
