"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from memory_bank.errors import UnavailableError
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder, BankState
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import API_KEY_HEADER

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Admin key, from the service's SIMS_API_KEY."
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_holder(request: Request) -> BankHolder:
    holder = request.app.state.holder
    if holder is None:
        raise UnavailableError("no bank configured: pass --bank or set SIMS_BANK", kind="not_ready")
    return holder


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_limiter(request: Request) -> CapacityLimiter | None:
    """Bounds concurrent retrievals (set up in the lifespan; None falls back to anyio's default)."""
    return getattr(request.app.state, "retrieve_limiter", None)


def current_state(holder: Annotated[BankHolder, Depends(get_holder)]) -> BankState:
    """The bank state this request uses from start to end (503 while none is loaded)."""
    return holder.require()


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    key: Annotated[str | None, Security(_api_key_header)],
) -> None:
    """401 without a key, 403 with a wrong one, 403 when the service has no key configured."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise ApiError(403, "admin_disabled", "the admin API is disabled: the service has no SIMS_API_KEY")
    if not key:
        raise ApiError(
            401, "unauthorized", f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": API_KEY_HEADER}
        )
    if not secrets.compare_digest(key.encode(), settings.api_key.get_secret_value().encode()):
        raise ApiError(403, "forbidden", f"wrong {API_KEY_HEADER}")


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[BankHolder, Depends(get_holder)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
LimiterDep = Annotated[CapacityLimiter | None, Depends(get_limiter)]
StateDep = Annotated[BankState, Depends(current_state)]
AdminDep = Annotated[None, Depends(require_api_key)]
