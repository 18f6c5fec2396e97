"""Probes: /healthz (the process answers) and /readyz (its dependencies answer too)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.pipeline import outage

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


async def _check(ping: Callable[[], Awaitable[None]]) -> dict[str, str]:
    try:
        await asyncio.wait_for(ping(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"status": "down", "reason": f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s"}
    except Exception as error:  # any failure is the detail the probe reports
        reason = getattr(error, "message", None) or type(error).__name__
        return {"status": "down", "reason": str(reason)}
    return {"status": "up"}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Ready when the model server answers (or is scaled to zero, to be woken), and the
    store too unless every feature using it answers without it (`checks.store.without` says
    how); a failing knowledge base degrades
    the answers (no context) without taking the gateway out of service. A gateway that is
    stopping says so, whatever its dependencies, so it leaves its Service's endpoints."""
    drain = request.app.state.drain
    if drain.draining:
        body = {"status": "draining", "seconds": round(drain.elapsed(), 1)}
        return JSONResponse(body, status_code=503)
    checks: dict[str, Any] = {}
    names = ["backend", "store"]
    pings = [services.backend.ping, services.store.ping]
    if services.retriever is not None:
        names.append("knowledge_base")
        pings.append(services.retriever.ping)
    results = await asyncio.gather(*(_check(ping) for ping in pings))
    checks = dict(zip(names, results, strict=True))
    if services.backend.asleep:
        # Scaled to zero: a request wakes the model and waits for it, so the gateway serves.
        checks["backend"] = {"status": "up", "replicas": "0: a request wakes the model"}
    settings = services.settings
    checks["store"]["kind"] = "redis" if settings.redis_url else "in-process"
    # Without its store the gateway answers on, unless a feature is set to refuse.
    required = ["backend"]
    if checks["store"]["status"] != "up":
        if outage.tolerated(settings, limited=settings.rate_limit.enabled):
            checks["store"]["without"] = outage.degraded_features(settings)
        else:
            required.append("store")
    required_up = all(checks[name]["status"] == "up" for name in required)
    if not required_up:
        status = "unavailable"
    elif any(check["status"] != "up" for check in checks.values()):
        status = "degraded"
    else:
        status = "ready"
    return JSONResponse(
        {"status": status, "checks": checks}, status_code=200 if required_up else 503
    )


class ModelState(BaseModel):
    asleep: bool = Field(
        description="Whether the model has no ready replica and requests wait for it to wake "
        "(scaled to zero, or starting)."
    )


@router.get("/model/state")
async def model_state(identity: IdentityDep, services: ServicesDep) -> ModelState:
    """Whether requests wait for the model to wake: what a bot tells a user whose answer is
    slow to begin. Any API key; nothing else is read."""
    del identity  # known caller; any identity may ask
    return ModelState(asleep=services.backend.asleep)
