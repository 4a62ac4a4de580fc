"""``GET /segments/{id}`` (RGBA crop) and ``GET /segments/{id}/meta``."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Response

from memory_bank import Bank
from memory_bank.png import encode_rgba_png
from retrieval_service.api.deps import HolderDep
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import ErrorResponse, SegmentMeta

router = APIRouter(prefix="/segments", tags=["segments"])

SegmentId = Annotated[int, Path(ge=0, le=2**63 - 1, description="Segment id in the bank version.")]
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


@router.get(
    "/{segment_id}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The segment's bounding-box crop as RGBA; alpha is 255 on the mask, 0 elsewhere.",
        },
        **_ERRORS,
    },
    summary="A segment's pixels",
)
async def segment_png(segment_id: SegmentId, holder: HolderDep, version: VersionQuery = None) -> Response:
    """The colour crop of a segment over its bounding box, with alpha = its mask."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    png = await to_thread.run_sync(_crop_png, bank, segment_id)
    return Response(png, media_type="image/png", headers={"X-SIMS-Bank-Version": bank.version})


@router.get("/{segment_id}/meta", response_model=SegmentMeta, responses=_ERRORS, summary="A segment's metadata")
async def segment_meta(segment_id: SegmentId, holder: HolderDep, version: VersionQuery = None) -> SegmentMeta:
    """What the bank's segment table records about a segment."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
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
