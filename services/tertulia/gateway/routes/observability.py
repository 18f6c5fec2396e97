"""/metrics for Prometheus, and /stats: the same figures summed for people."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tertulia.gateway.deps import ServicesDep

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats")
async def stats(services: ServicesDep) -> dict[str, float | int]:
    """Requests, server errors (5xx), success rate and mean latency since the process started."""
    return services.metrics.stats()
