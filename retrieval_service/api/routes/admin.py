"""``POST /admin/reload``: switch to the bank's newest published version without dropping requests."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from retrieval_service.api.deps import AdminDep, HolderDep, MetricsDep
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import ErrorResponse, ReloadResponse

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse, "description": "No X-API-Key header."},
        403: {"model": ErrorResponse, "description": "Wrong key, or no key configured (admin API disabled)."},
        409: {
            "model": ErrorResponse,
            "description": "The published version failed to load (e.g. damaged); the old one still serves.",
        },
        503: {"model": ErrorResponse, "description": "No bank configured."},
    },
    summary="Serve the newest published bank version",
)
async def reload(_: AdminDep, holder: HolderDep, metrics: MetricsDep) -> ReloadResponse:
    """Load the bank's current published version (its `CURRENT`) and swap it in.

    Requests already running finish on the version they started with; new ones get the new
    version as soon as it is loaded and warmed. If that version is already served, nothing
    happens and `reloaded` is false (status 200: reloading is idempotent).
    """
    before = holder.current
    try:
        outcome = await holder.reload()
    except Exception as e:
        metrics.reloads.labels("failed").inc()
        still = f"; still serving {before.version}" if before else ""
        log.error("reload failed: %s", e)
        raise ApiError(409, "reload_failed", f"reload failed: {e}{still}") from None
    metrics.reloads.labels("switched" if outcome.reloaded else "unchanged").inc()
    if outcome.reloaded:
        message = f"now serving {outcome.version} (was {outcome.previous_version})"
    else:
        message = f"already serving the newest published version {outcome.version}"
    return ReloadResponse(
        reloaded=outcome.reloaded,
        previous_version=outcome.previous_version or "",
        version=outcome.version,
        message=message,
        seconds=round(outcome.seconds, 3),
    )
