"""FastAPI dependencies: the process's services, its settings, and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tertulia.gateway.pipeline.auth import Identity, presented_key
from tertulia.gateway.services import Services
from tertulia.gateway.settings import GatewaySettings


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_app_settings(services: ServicesDep) -> GatewaySettings:
    return services.settings


SettingsDep = Annotated[GatewaySettings, Depends(get_app_settings)]


async def authenticate(request: Request, services: ServicesDep) -> Identity:
    return services.api_keys.identify(presented_key(request.headers))


IdentityDep = Annotated[Identity, Depends(authenticate)]
