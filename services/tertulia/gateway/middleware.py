"""One pure ASGI middleware for every request: a request id, the request metrics and one log
line (the caller and its body limit are the gate's, gate.py). Pure ASGI, not
BaseHTTPMiddleware, so streams pass through untouched and the added latency stays in
microseconds.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tertulia.common.logging import request_id
from tertulia.gateway.drain import Drain
from tertulia.gateway.metrics import GatewayMetrics

logger = logging.getLogger("tertulia.gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: GatewayMetrics,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        current = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(current)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", current.encode()),
                ]
                if self.drain.draining:
                    # Stopping: the client's next request opens a connection to a replica
                    # that stays.
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)
