"""``GET /segments/{id}`` (RGBA crop), ``/meta``, ``/thumbnail``, and ``POST /segments/batch`` (many at once)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Response

from memory_bank import Bank
from memory_bank.images import resize_longest_side
from memory_bank.png import encode_rgba_png
from retrieval_service.api.deps import HolderDep
from retrieval_service.api.routes import binary_response
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import (
    ErrorResponse,
    SegmentBatchRequest,
    SegmentBatchResponse,
    SegmentMeta,
    SegmentPixelsOut,
)
from retrieval_service.types import MAX_ID

router = APIRouter(prefix="/segments", tags=["segments"])

SegmentIdPath = Annotated[int, Path(ge=0, le=MAX_ID, description="Segment id in the bank version.")]
VersionQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="A published bank version (default: the one served). Ids are stable across appends "
        "(`sims index add`) but not across rebuilds, so pass the `bank_version` a retrieval reported.",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such segment or version."},
    422: {"model": ErrorResponse, "description": "Malformed id or version."},
    503: {"model": ErrorResponse, "description": "No bank loaded yet."},
}


def _check_id(bank: Bank, segment_id: int) -> None:
    if segment_id >= bank.num_segments:
        raise ApiError(
            404,
            "segment_not_found",
            f"segment {segment_id} is not in bank version {bank.version} (ids 0..{bank.num_segments - 1})",
        )


def _crop_png(bank: Bank, segment_id: int) -> bytes:
    seg = bank.segment(segment_id)
    return encode_rgba_png(seg.crop, seg.crop_mask)


def _crops(bank: Bank, segment_ids: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop, crop mask) of each segment; each image's photo and component map decoded once."""
    image_of, local, bbox = bank.column("image_id"), bank.column("local_index"), bank.column("bbox")
    decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for sid in segment_ids:
        image_id = int(image_of[sid])
        if image_id not in decoded:
            decoded[image_id] = (np.asarray(bank.photos[image_id]), np.asarray(bank.components[image_id]))
        photo, components = decoded[image_id]
        y0, x0, y1, x1 = (int(v) for v in bbox[sid])
        mask = components[y0:y1, x0:x1] == local[sid] + 1
        out.append((np.where(mask[..., None], photo[y0:y1, x0:x1], 0).astype(np.uint8), mask))
    return out


def _meta(bank: Bank, segment_id: int) -> SegmentMeta:
    row = bank.segments.slice(segment_id, 1).to_pylist()[0]
    return SegmentMeta(
        segment_id=row["segment_id"],
        image_id=row["image_id"],
        class_id=row["class_id"],
        class_name=bank.classes.names[row["class_id"]],
        local_index=row["local_index"],
        bbox=list(row["bbox"]),
        context_box=list(row["context_box"]),
        area=row["area"],
        centroid=list(row["centroid"]),
        source_file=row["source_file"],
        split=row["split"],
        bank_version=bank.version,
    )


def _batch(bank: Bank, segment_ids: list[int]) -> SegmentBatchResponse:
    for sid in segment_ids:
        _check_id(bank, sid)
    segments = [
        SegmentPixelsOut(
            **_meta(bank, sid).model_dump(), crop_png=base64.b64encode(encode_rgba_png(crop, mask)).decode("ascii")
        )
        for sid, (crop, mask) in zip(segment_ids, _crops(bank, segment_ids), strict=True)
    ]
    return SegmentBatchResponse(bank_version=bank.version, segments=segments)


def _thumbnail_png(bank: Bank, segment_id: int, size: int) -> bytes:
    ((crop, mask),) = _crops(bank, [segment_id])
    rgba = np.concatenate([crop, mask[..., None].astype(np.uint8) * 255], axis=2)
    small = resize_longest_side(rgba, size)
    return encode_rgba_png(small[..., :3], small[..., 3])


#: Longest side of a thumbnail, in pixels.
ThumbSize = Annotated[int, Query(ge=16, le=1024, description="Longest side of the thumbnail, pixels.")]


@router.post(
    "/batch",
    response_model=SegmentBatchResponse,
    responses={
        400: {"model": ErrorResponse, "description": "A body that is not JSON."},
        413: {"model": ErrorResponse, "description": "Body larger than the limit."},
        **_ERRORS,
    },
    summary="Many segments' pixels and metadata in one request",
)
async def segments_batch(
    body: SegmentBatchRequest, holder: HolderDep, version: VersionQuery = None
) -> SegmentBatchResponse:
    """Metadata and RGBA crop (base64 PNG, alpha = mask) of every id, in request order.

    What a synthesis worker reads a layout's chosen segments with: one request instead of two
    per segment, each source image decoded once. 404 if any id is not in the version.
    """
    bank = await to_thread.run_sync(holder.bank_for, version)
    return await to_thread.run_sync(_batch, bank, body.ids)


# Before `/{segment_id}`: otherwise `GET /segments/batch` would be a segment id that is not a number.
@router.api_route("/batch", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def segments_batch_other_methods() -> None:
    """``/segments/batch`` takes only POST: 405 with ``Allow``."""
    raise ApiError(405, "method_not_allowed", "/segments/batch takes only POST", headers={"Allow": "POST"})


@router.get(
    "/{segment_id}/thumbnail",
    response_class=Response,
    responses={
        200: binary_response("image/png", "RGBA PNG: the crop scaled to `size` on its longest side, alpha = mask."),
        **_ERRORS,
    },
    summary="A segment's thumbnail",
)
async def segment_thumbnail(
    segment_id: SegmentIdPath, holder: HolderDep, size: ThumbSize = 96, version: VersionQuery = None
) -> Response:
    """The segment's bounding-box crop of its source photo, alpha = mask, longest side `size`."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    png = await to_thread.run_sync(_thumbnail_png, bank, segment_id, size)
    return Response(png, media_type="image/png", headers={"X-SIMS-Bank-Version": bank.version})


@router.get(
    "/{segment_id}",
    response_class=Response,
    responses={
        200: binary_response(
            "image/png", "The segment's bounding-box crop as RGBA; alpha is 255 on the mask, 0 elsewhere."
        ),
        **_ERRORS,
    },
    summary="A segment's pixels",
)
async def segment_png(segment_id: SegmentIdPath, holder: HolderDep, version: VersionQuery = None) -> Response:
    """The colour crop of a segment over its bounding box, with alpha = its mask."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    png = await to_thread.run_sync(_crop_png, bank, segment_id)
    return Response(png, media_type="image/png", headers={"X-SIMS-Bank-Version": bank.version})


@router.get("/{segment_id}/meta", response_model=SegmentMeta, responses=_ERRORS, summary="A segment's metadata")
async def segment_meta(segment_id: SegmentIdPath, holder: HolderDep, version: VersionQuery = None) -> SegmentMeta:
    """What the bank's segment table records about a segment."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    return _meta(bank, segment_id)
