"""``GET /images``: the bank's images by file name, each one's layout and a photo thumbnail (for the Studio page)."""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Response
from PIL import Image

from memory_bank import Bank
from memory_bank.images import resize_longest_side
from memory_bank.png import encode_layout_png
from retrieval_service.api.deps import StateDep
from retrieval_service.api.routes import bank_response, check_bank_id, file_route
from retrieval_service.http_models import ErrorResponse, ImageEntry, ImageList

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[int, Path(ge=0, le=2**31 - 1, description="Image id in the served bank version.")]
#: JPEG quality of photo thumbnails.
JPEG_QUALITY = 85

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such image."},
    422: {"model": ErrorResponse, "description": "Malformed id or query value."},
    503: {"model": ErrorResponse, "description": "No bank loaded yet."},
}


def _names(bank: Bank) -> list[str]:
    return [str(n) for n in bank.images["source_file"].to_pylist()]


def _check_id(bank: Bank, image_id: int) -> None:
    check_bank_id("image", image_id, bank.num_images, bank.version)


@router.get("", response_model=ImageList, responses=_ERRORS, summary="The bank's images, searched by file name")
async def list_images(
    state: StateDep,
    q: Annotated[str, Query(max_length=200, description="Case-insensitive substring of the file name.")] = "",
    limit: Annotated[int, Query(ge=1, le=500, description="Images per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Matches to skip.")] = 0,
) -> ImageList:
    """Images whose source file name contains `q`, in image id order: `total` matches, one page of them."""
    names = _names(state.bank)
    needle = q.lower()
    found = [ImageEntry(image_id=i, name=n) for i, n in enumerate(names) if needle in n.lower()]
    return ImageList(total=len(found), images=found[offset : offset + limit])


@router.get(
    "/{image_id}/layout",
    **file_route(
        "image/png", "Single-channel PNG of the bank's class ids (255 = unlabelled), at the bank's resolution.", _ERRORS
    ),
    summary="A bank image's label map",
)
async def image_layout(image_id: ImageId, state: StateDep) -> Response:
    """The image's label map in bank ids: a layout `/synthesize` accepts as it is."""
    bank = state.bank
    _check_id(bank, image_id)
    png = await to_thread.run_sync(lambda: encode_layout_png(np.asarray(bank.labels[image_id])))
    return bank_response(png, "image/png", bank.version)


@router.get(
    "/{image_id}/photo",
    **file_route("image/jpeg", "JPEG of the bank's photo, `size` pixels on its longest side.", _ERRORS),
    summary="A bank image's photo thumbnail",
)
async def image_photo(
    image_id: ImageId,
    state: StateDep,
    size: Annotated[int, Query(ge=16, le=1024, description="Longest side, pixels.")] = 160,
) -> Response:
    """The bank photo (at the bank's resolution) scaled to `size` on its longest side."""
    bank = state.bank
    _check_id(bank, image_id)

    def thumbnail() -> bytes:
        small = resize_longest_side(np.asarray(bank.photos[image_id]), size)
        buf = io.BytesIO()
        Image.fromarray(small).save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    jpeg = await to_thread.run_sync(thumbnail)
    return bank_response(jpeg, "image/jpeg", bank.version)
