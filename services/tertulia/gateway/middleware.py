"""One pure ASGI middleware for every request: a request id, the body-size limit, the
request metrics and one log line. Pure ASGI, not BaseHTTPMiddleware, so streams pass
through untouched and the added latency stays in microseconds.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tertulia.common.logging import request_id
from tertulia.gateway.drain import Drain
from tertulia.gateway.errors import PayloadTooLarge
from tertulia.gateway.metrics import GatewayMetrics

logger = logging.getLogger("tertulia.gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


UPLOAD_PREFIX = "/admin/knowledge/"


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        max_upload_bytes: int | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain or Drain()
        self.max_body_bytes = max_body_bytes
        # Document uploads to the admin API may be larger than chat requests.
        self.max_upload_bytes = max_upload_bytes or max_body_bytes

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
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", current.encode()),
                ]
                if self.drain.draining:
                    # Stopping: the client's next request opens a connection to a replica
                    # that stays.
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        received = 0
        limit = (
            self.max_upload_bytes
            if scope["path"].startswith(UPLOAD_PREFIX)
            else self.max_body_bytes
        )

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge
            await self.app(scope, receive_within_limit, send_with_id)
        except BodyTooLarge:
            if response_started:
                raise
            error = PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            await _send_error(send_with_id, error.status_code, error.body())
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


async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
