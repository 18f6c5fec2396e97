"""The gate: who is calling, decided from the headers alone before a byte of the body is read,
and how much body that caller may then send.

Pure ASGI, inside the request-context middleware and outside everything that parses: a request
whose caller is not known is answered 401 with its body unread (FastAPI would otherwise parse
a JSON body of any size before a dependency checks the key), a caller refused the admin API is
answered 403 the same way, and the limit on the body is the caller's: the knowledge base's
upload size for an admin identity on its upload routes, the chat size for everyone else. The
identity is kept in the request's state, so every later step reads the one decided here.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tertulia.gateway.errors import (
    Forbidden,
    GatewayError,
    KnowledgeBaseDisabled,
    MisdirectedRequest,
    PayloadTooLarge,
)
from tertulia.gateway.pipeline.auth import Identity, is_admin, presented_key
from tertulia.gateway.services import Services

ADMIN_PREFIX = "/admin/"
UPLOAD_PREFIX = "/admin/knowledge/"
# The routes anyone may call, whatever the keys: probes, the web chat's page and the API's
# documentation. They take no body; their GETs read none.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"})
# /metrics and /stats, when no metrics port of their own is configured.
METRICS_PATHS = frozenset({"/metrics", "/stats"})
# Where a browser trades the web chat's key for a session (routes/web.py).
SESSION_PATH = "/web/session"
# Where the identity is kept for the later steps (Starlette's `request.state`).
STATE = "state"
IDENTITY = "identity"


class BodyTooLarge(Exception):
    pass


def identity_of(scope: Scope) -> Identity | None:
    """The identity the gate decided for this request; None when it decided none (a public
    route, or an app called without the gate, as some unit tests do)."""
    state = scope.get(STATE) or {}
    found = state.get(IDENTITY)
    return found if isinstance(found, Identity) else None


class Gate:
    """`services` are read from the app's state at each request: they open in the lifespan,
    after the middleware stack is built."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        path: str = scope["path"]
        headers = Headers(scope=scope)
        try:
            _check_host(services.settings.allowed_hosts, headers)
            identity = self._identify(services, path, scope["method"], headers)
            if identity is not None and _bare_web_key(services, identity) and path != SESSION_PATH:
                raise Forbidden(
                    f"the {identity.name!r} key only opens web chat sessions ({SESSION_PATH})"
                )
            limit = self._limit(services, path, identity)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        except GatewayError as error:
            await refuse(send, error)
            return
        if identity is not None:
            scope.setdefault(STATE, {})[IDENTITY] = identity
        received = 0
        response_started = False

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_noting_start)
        except BodyTooLarge:
            if response_started:
                raise
            too_large = PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            await refuse(send, too_large)

    @staticmethod
    def _identify(services: Services, path: str, method: str, headers: Headers) -> Identity | None:
        """The caller: the API key's identity, else the web chat's session; None for a public
        route called without either. Unauthorized when a key is wrong, or missing where one
        is needed."""
        key = presented_key(headers)
        if key is not None:
            return services.api_keys.identify(key)
        if path in PUBLIC_PATHS or (path in METRICS_PATHS and method in ("GET", "HEAD")):
            return None
        session = services.sessions.identify(headers, method)
        if session is not None:
            return session
        return services.api_keys.identify(None)

    @staticmethod
    def _limit(services: Services, path: str, identity: Identity | None) -> int:
        settings = services.settings
        if path.startswith(ADMIN_PREFIX):
            if services.retriever is None:
                raise KnowledgeBaseDisabled("the knowledge base is not enabled for this gateway")
            if identity is None or not is_admin(identity, services.api_keys, settings):
                name = identity.name if identity is not None else "anonymous"
                raise Forbidden(f"identity {name!r} may not use the admin API")
            if path.startswith(UPLOAD_PREFIX):
                return settings.knowledge_base.max_upload_bytes
        return settings.limits.max_body_bytes


def _bare_web_key(services: Services, identity: Identity) -> bool:
    """Whether the web chat's key was presented as such: it opens a session and does
    nothing else, so whoever holds it cannot act as another browser's user."""
    return (
        services.api_keys.enabled
        and identity.user is None
        and identity.name == services.sessions.identity
    )


def _check_host(allowed: list[str], headers: Headers) -> None:
    """Refuse a Host header that names no host this gateway answers to (none: any)."""
    if not allowed:
        return
    host = headers.get("host", "")
    name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    if name.lower() not in allowed:
        raise MisdirectedRequest(f"this gateway does not answer for the host {host[:100]!r}")


async def refuse(send: Send, error: GatewayError) -> None:
    """Answer `error` at once. A body not read yet is never handed to anything: the server
    drops what still arrives of it as it comes (memory stays flat), and the connection stays
    open, so the client reads this answer rather than a reset."""
    payload = json.dumps(error.body()).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
    ]
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": error.status_code,
        "headers": headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": payload})
