"""Running the gateway: uvicorn on the public port, and on the metrics port when one is set."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from tertulia.gateway.app import create_app, create_metrics_app
from tertulia.gateway.drain import DrainingServer
from tertulia.gateway.settings import GatewaySettings


class _Follower(uvicorn.Server):
    """A server that leaves signals to the one it follows, and stops when told."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(settings: GatewaySettings, host: str, port: int) -> None:
    app = create_app(settings)
    public = DrainingServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            # How long a shutdown waits for the answers in flight, once it stops listening.
            timeout_graceful_shutdown=round(settings.shutdown.grace_seconds),
        ),
        app.state.drain,
        settings.shutdown.drain_delay_seconds,
    )
    if settings.metrics_port is None:
        public.run()
        return
    metrics = _Follower(
        uvicorn.Config(
            create_metrics_app(app),
            host=host,
            port=settings.metrics_port,
            log_config=None,
            access_log=False,
            lifespan="off",  # the public app's lifespan opens what both serve
        )
    )
    asyncio.run(_serve_both(public, metrics))


async def _serve_both(public: uvicorn.Server, metrics: uvicorn.Server) -> None:
    """The public server, which handles SIGTERM (and drains), and the metrics server,
    stopped with it."""
    follower = asyncio.create_task(metrics.serve())
    try:
        await public.serve()
    finally:
        metrics.should_exit = True
        await follower
