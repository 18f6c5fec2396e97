"""The chat routes' valid requests, dispatched without the framework's per-request work.

FastAPI's own work on a request is a large share of a chat request's CPU: its routing, its
dependency solver, its middleware layers, and validating the response it is handed (measured
in-process, the whole /chat pipeline costs about a third less this way, and a bare endpoint
150 µs through FastAPI against 12 µs called as below). For the three routes that carry the
chat traffic this lane calls the same endpoint functions directly, with what FastAPI would
have passed them: the body validated into its model, the caller's identity and the services.

It takes only requests FastAPI would accept: a JSON body that validates. Anything else (a
wrong content type, malformed JSON, an invalid field, an empty body) goes on to the FastAPI
route with its body replayed, so every refusal keeps FastAPI's behaviour and its message.
The routes stay declared in FastAPI too: the OpenAPI document, and that fallback.
"""

from __future__ import annotations

from typing import get_type_hints

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tertulia.gateway.errors import GatewayError, error_response
from tertulia.gateway.gate import identity_of
from tertulia.gateway.pipeline.auth import presented_key
from tertulia.gateway.services import Services


class FastLane:
    """Pure ASGI, inside the request-context middleware and the gate: request ids, the
    caller's identity, the body limit, metrics and the access log apply to both lanes alike.

    `routes` are the FastAPI routes it serves: POST endpoints taking `request` (their body
    model), `identity` and `services`.
    """

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes: dict[str, tuple[APIRoute, type[BaseModel]]] = {}
        for route in routes:
            body = get_type_hints(route.endpoint)["request"]
            if route.methods != {"POST"} or not issubclass(body, BaseModel):
                raise TypeError(f"{route.path} is not a POST route with a body model")
            self.routes[route.path] = (route, body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if target is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _json(headers):
            await self.app(scope, receive, send)
            return
        route, model = target
        body = await _read_body(receive)
        if body is None:  # the client went away before it finished sending
            return
        try:
            request = model.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = route  # as FastAPI sets it: the metrics read its path template
        services: Services = scope["app"].state.services
        try:
            identity = identity_of(scope) or services.api_keys.identify(presented_key(headers))
            result = await route.endpoint(request=request, identity=identity, services=services)
        except GatewayError as error:
            result = error_response(error)
        if isinstance(result, BaseModel):
            result = Response(result.model_dump_json(), media_type="application/json")
        await result(scope, receive, send)


def post_route(router: APIRouter, path: str) -> APIRoute:
    """The POST route of `router` at `path`."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == path and "POST" in (route.methods or ()):
            return route
    raise LookupError(f"no POST {path} in the router")


def _json(headers: Headers) -> bool:
    """Whether FastAPI would read the body as JSON: no content type, or a JSON one."""
    content_type = headers.get("content-type")
    if content_type is None:
        return True
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body, already read, given again first."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
