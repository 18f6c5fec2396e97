"""The OpenAI-compatible API, so any OpenAI client or chat UI can use the gateway."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from tertulia.gateway.backend import UpstreamEventSource
from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.errors import ModelNotFound
from tertulia.gateway.pipeline import completions
from tertulia.gateway.schemas import ERROR_RESPONSES, ErrorBody, OpenAIChatRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
async def list_models(_: IdentityDep, services: ServicesDep) -> dict[str, Any]:
    """The one model this gateway serves, under the name its clients use."""
    return {"object": "list", "data": [_model(services.settings.model_name)]}


@router.get("/models/{model}", responses={404: {"model": ErrorBody}})
async def retrieve_model(model: str, _: IdentityDep, services: ServicesDep) -> dict[str, Any]:
    """The served model by its id; any other id is not found."""
    if model != services.settings.model_name:
        raise ModelNotFound(
            f"no model {model!r} here; this gateway serves {services.settings.model_name!r}",
            param="model",
        )
    return _model(model)


def _model(name: str) -> dict[str, Any]:
    # `created` is required by OpenAI's Model object; the gateway has no date for it.
    return {"id": name, "object": "model", "created": 0, "owned_by": "tertulia"}


@router.post(
    "/chat/completions",
    responses={
        200: {"content": {"text/event-stream": {}, "application/json": {}}},
        **ERROR_RESPONSES,
    },
    response_model=None,
)
async def create_chat_completion(
    request: OpenAIChatRequest,
    identity: IdentityDep,
    services: ServicesDep,
    session: Annotated[
        str | None,
        Header(
            alias="X-Session-ID",
            max_length=256,
            description="The conversation these messages belong to: its requests go to the "
            "model server replica that has its history cached (else the `user` field's).",
        ),
    ] = None,
) -> JSONResponse | UpstreamEventSource:
    started = time.monotonic()
    body = await completions.prepare_completion(services, identity, request)
    key = session or (f"user:{request.user}" if request.user else None)
    if not request.stream:
        result = await services.backend.complete(body, key=key)
        services.metrics.first_token_seconds.observe(time.monotonic() - started)
        # Already plain JSON from the backend: no model to validate it against, so skip that.
        return JSONResponse(await completions.moderated_completion(services, result))
    stream = await services.backend.open_stream(body, key=key)
    wants_usage = request.stream_options is not None and request.stream_options.include_usage
    return UpstreamEventSource(
        completions.passthrough(services, stream, started, client_wants_usage=wants_usage), stream
    )
