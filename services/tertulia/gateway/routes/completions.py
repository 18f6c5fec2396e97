"""The OpenAI-compatible API, so any OpenAI client or chat UI can use the gateway."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tertulia.gateway.backend import UpstreamEventSource
from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.pipeline import completions
from tertulia.gateway.schemas import ERROR_RESPONSES, OpenAIChatRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
async def list_models(_: IdentityDep, services: ServicesDep) -> dict[str, Any]:
    """The one model this gateway serves, under the name its clients use."""
    return {
        "object": "list",
        "data": [{"id": services.settings.model_name, "object": "model", "owned_by": "tertulia"}],
    }


@router.post(
    "/chat/completions",
    responses={
        200: {"content": {"text/event-stream": {}, "application/json": {}}},
        **ERROR_RESPONSES,
    },
    response_model=None,
)
async def create_chat_completion(
    request: OpenAIChatRequest, identity: IdentityDep, services: ServicesDep
) -> JSONResponse | UpstreamEventSource:
    started = time.monotonic()
    body = await completions.prepare_completion(services, identity, request)
    if not request.stream:
        result = await services.backend.complete(body)
        services.metrics.first_token_seconds.observe(time.monotonic() - started)
        # Already plain JSON from the backend: no model to validate it against, so skip that.
        return JSONResponse(await completions.moderated_completion(services, result))
    stream = await services.backend.open_stream(body)
    wants_usage = request.stream_options is not None and request.stream_options.include_usage
    return UpstreamEventSource(
        completions.passthrough(services, stream, started, client_wants_usage=wants_usage), stream
    )
