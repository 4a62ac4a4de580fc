"""One APIRouter per resource."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from retrieval_service.http_errors import ApiError

#: Response header naming the bank version that data came from (segment and image ids refer to it).
BANK_VERSION_HEADER = "X-SIMS-Bank-Version"


def binary_response(media_type: str, description: str) -> dict[str, Any]:
    """The ``responses[200]`` entry of a route that answers with a file (a PNG, a JPEG) rather than JSON."""
    return {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}, "description": description}


def file_route(media_type: str, description: str, errors: dict[int | str, dict[str, Any]]) -> dict[str, Any]:
    """The ``response_class`` and ``responses`` arguments of a route that answers with a file, or one of ``errors``."""
    return {"response_class": Response, "responses": {200: binary_response(media_type, description), **errors}}


def bank_response(content: bytes, media_type: str, bank_version: str) -> Response:
    """``content`` read from a bank version, that version in :data:`BANK_VERSION_HEADER`."""
    return Response(content, media_type=media_type, headers={BANK_VERSION_HEADER: bank_version})


def check_bank_id(what: str, item_id: int, count: int, bank_version: str) -> None:
    """A 404 ``<what>_not_found`` unless ``item_id`` is one of the ids 0..count-1 of ``what`` in the version."""
    if item_id >= count:
        raise ApiError(
            404,
            f"{what}_not_found",
            f"{what} {item_id} is not in bank version {bank_version} (ids 0..{count - 1})",
        )
