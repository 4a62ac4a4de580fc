"""One APIRouter per resource."""

from __future__ import annotations

from typing import Any


def binary_response(media_type: str, description: str) -> dict[str, Any]:
    """The ``responses[200]`` entry of a route that answers with a file (a PNG, a JPEG) rather than JSON."""
    return {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}, "description": description}
