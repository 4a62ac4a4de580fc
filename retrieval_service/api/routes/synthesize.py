"""``POST /synthesize``: answered by a synthesis worker once one is configured (a later issue)."""

from __future__ import annotations

from fastapi import APIRouter

from retrieval_service.api.deps import SettingsDep
from retrieval_service.api.errors import ApiError
from retrieval_service.api.models import ErrorResponse

router = APIRouter(tags=["synthesis"])


@router.post(
    "/synthesize",
    responses={503: {"model": ErrorResponse, "description": "No synthesis worker is configured."}},
    summary="Synthesize a photo from a layout (needs a synthesis worker)",
)
async def synthesize(settings: SettingsDep) -> None:
    """Not available yet: always 503 with a JSON body saying why."""
    if settings.synthesis_url is None:
        message = "no synthesis worker is configured (set SIMS_SYNTHESIS_URL once one runs)"
    else:
        message = f"forwarding to the synthesis worker at {settings.synthesis_url} is not implemented yet"
    raise ApiError(503, "synthesis_unavailable", message)
