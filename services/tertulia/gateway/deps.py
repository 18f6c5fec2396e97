"""FastAPI dependencies: the process's services, its settings, and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tertulia.gateway.gate import identity_of
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
    """The identity the gate decided (gate.py); from the key alone where no gate ran."""
    decided = identity_of(request.scope)
    if decided is not None:
        return decided
    return services.api_keys.identify(presented_key(request.headers))


IdentityDep = Annotated[Identity, Depends(authenticate)]
