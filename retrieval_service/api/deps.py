"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from memory_bank.errors import UnavailableError
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.settings import RouteClass, Settings
from retrieval_service.api.state import BankHolder
from retrieval_service.bank_state import BankState
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import API_KEY_HEADER

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Key of a route class (SIMS_API_KEYS; admin also SIMS_API_KEY): needed by /admin/* and, when the "
    "service configures keys for them, by /synthesize, mode=full retrieval and POST /segments/batch.",
)


#: The X-API-Key header, if sent (documented in the spec as the ``APIKeyHeader`` scheme).
ApiKeyDep = Annotated[str | None, Security(_api_key_header)]


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


def check_route_key(settings: Settings, route_class: RouteClass, key: str | None) -> None:
    """Let the request through if ``route_class`` needs no key or ``key`` is one of its keys.

    401 without a key, 403 with a wrong one; the admin class without any key configured is disabled (403).
    """
    keys = settings.route_keys(route_class)
    if not keys:
        if route_class == "admin":
            raise ApiError(403, "admin_disabled", "the admin API is disabled: the service has no SIMS_API_KEY")
        return
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            f"missing {API_KEY_HEADER} header ({route_class} needs a key)",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    # Compare with every key (no early exit), in constant time per key.
    matches = [secrets.compare_digest(key.encode(), k.encode()) for k in sorted(keys)]
    if not any(matches):
        raise ApiError(403, "forbidden", f"wrong {API_KEY_HEADER} for {route_class}")


def route_key_dependency(route_class: RouteClass) -> Callable[..., None]:
    """A dependency that checks the key of ``route_class`` (see :func:`check_route_key`)."""

    def require(settings: Annotated[Settings, Depends(get_settings)], key: ApiKeyDep) -> None:
        check_route_key(settings, route_class, key)

    return require


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[BankHolder, Depends(get_holder)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
LimiterDep = Annotated[CapacityLimiter | None, Depends(get_limiter)]
StateDep = Annotated[BankState, Depends(current_state)]
AdminDep = Annotated[None, Depends(route_key_dependency("admin"))]
SynthesizeKeyDep = Annotated[None, Depends(route_key_dependency("synthesize"))]
SegmentsKeyDep = Annotated[None, Depends(route_key_dependency("segments"))]
