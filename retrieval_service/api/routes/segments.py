"""``GET /segments/{id}`` (RGBA crop), ``/meta``, ``/thumbnail``, and ``POST /segments/batch`` (many at once)."""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Scope

from memory_bank import Bank
from memory_bank.images import resize_longest_side
from memory_bank.png import encode_rgba_png
from retrieval_service.admission import TIMEOUT_HEADER, Admission, Ticket, requested_timeout
from retrieval_service.api.deps import HolderDep, SegmentsKeyDep, SettingsDep, check_route_key
from retrieval_service.api.limits import header
from retrieval_service.api.routes import BANK_VERSION_HEADER, bank_response, check_bank_id, file_route
from retrieval_service.api.settings import Settings
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import (
    API_KEY_HEADER,
    ErrorResponse,
    SegmentBatchRequest,
    SegmentBatchResponse,
    SegmentMeta,
    SegmentPixelsOut,
)
from retrieval_service.types import MAX_ID

router = APIRouter(prefix="/segments", tags=["segments"])
_KEY, _TIMEOUT = API_KEY_HEADER.lower().encode(), TIMEOUT_HEADER.lower().encode()
#: Segments encoded per step of a streamed batch, and decoded source images kept between steps.
BATCH_CHUNK, BATCH_IMAGES = 64, 32
#: Seconds of CPU of a batch are about ``images + CROP_MPX_WORK * Mpx`` image decodes (measured on CamVid).
CROP_MPX_WORK = 20.0

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
    check_bank_id("segment", segment_id, bank.num_segments, bank.version)


def _crop_png(bank: Bank, segment_id: int) -> bytes:
    seg = bank.segment(segment_id)
    return encode_rgba_png(seg.crop, seg.crop_mask)


def _crops(
    bank: Bank, segment_ids: list[int], decoded: OrderedDict[int, tuple[np.ndarray, np.ndarray]] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop, crop mask) of each segment; each image's photo and component map decoded once, and
    kept in ``decoded`` (the last :data:`BATCH_IMAGES` of them) for the next call."""
    image_of, local, bbox = bank.column("image_id"), bank.column("local_index"), bank.column("bbox")
    decoded = OrderedDict() if decoded is None else decoded
    out = []
    for sid in segment_ids:
        image_id = int(image_of[sid])
        got = decoded.get(image_id)
        if got is None:
            got = decoded[image_id] = (np.asarray(bank.photos[image_id]), np.asarray(bank.components[image_id]))
            while len(decoded) > BATCH_IMAGES:
                decoded.popitem(last=False)
        decoded.move_to_end(image_id)
        photo, components = got
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
    """The whole batch at once (what the stream of :func:`segments_batch` sends, for tests and callers in Python)."""
    for sid in segment_ids:
        _check_id(bank, sid)
    return SegmentBatchResponse.model_validate_json(b"".join(_BatchStream(bank, segment_ids, None).chunks()))


def batch_size(bank: Bank, segment_ids: list[int]) -> tuple[int, int]:
    """(crop pixels, distinct source images) of a batch: its response's size and its work, from the
    segment table alone."""
    ids = np.asarray(segment_ids, np.int64)
    if not len(ids):
        return 0, 0
    box = bank.column("bbox")[ids].astype(np.int64)
    pixels = int(((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).sum())
    return pixels, len(np.unique(bank.column("image_id")[ids]))


class _BatchStream:
    """The JSON of a :class:`SegmentBatchResponse`, made a chunk of segments at a time (each chunk's
    source images decoded once, the last :data:`BATCH_IMAGES` kept), so a batch's memory is one
    chunk's, not its whole response's."""

    def __init__(self, bank: Bank, segment_ids: list[int], ticket: Ticket | None) -> None:
        self.bank, self.ids, self.ticket = bank, segment_ids, ticket
        self._images: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def head(self) -> bytes:
        return b'{"bank_version":' + json.dumps(self.bank.version).encode() + b',"segments":['

    def chunk(self, index: int) -> bytes:
        """Segments ``index * BATCH_CHUNK`` onwards, as comma-separated JSON objects (a comma first after the first)."""
        ids = self.ids[index * BATCH_CHUNK : (index + 1) * BATCH_CHUNK]
        rows = self.bank.segments.take(pa.array(ids, pa.int64())).to_pylist()
        names, version = self.bank.classes.names, self.bank.version
        parts = []
        for row, (crop, mask) in zip(rows, _crops(self.bank, ids, self._images), strict=True):
            seg = SegmentPixelsOut(
                **{k: row[k] for k in _META_COLUMNS},
                class_name=names[row["class_id"]],
                bank_version=version,
                crop_png=base64.b64encode(encode_rgba_png(crop, mask)).decode("ascii"),
            )
            parts.append(seg.model_dump_json().encode())
        return (b"," if index else b"") + b",".join(parts)

    def chunks(self) -> Iterator[bytes]:
        """Every part of the body, in order (blocking)."""
        yield self.head()
        for i in range(self.count):
            yield self.chunk(i)
        yield b"]}"

    @property
    def count(self) -> int:
        return -(-len(self.ids) // BATCH_CHUNK)

    async def body(self, first: bytes) -> AsyncIterator[bytes]:
        """The response body after ``first`` (the head and the first chunk, made before the response
        started); finishes the ticket at the end, releases it if the client goes away."""
        try:
            yield first
            for i in range(1, self.count):
                yield await to_thread.run_sync(self.chunk, i)
            yield b"]}"
        except BaseException:
            if self.ticket is not None:
                self.ticket.release()
            raise
        if self.ticket is not None:
            self.ticket.finish()


_META_COLUMNS = (
    "segment_id",
    "image_id",
    "class_id",
    "local_index",
    "bbox",
    "context_box",
    "area",
    "centroid",
    "source_file",
    "split",
)


def admit_batch(scope: Scope) -> None:
    """The gate of ``POST /segments/batch`` (:class:`~retrieval_service.api.limits.AdmissionMiddleware`),
    from the request head alone: the key (class ``segments``), then the queue state (503
    ``segments_busy`` when no batch could be admitted now). Its size is known only from the body:
    the route admits it then, before it reads any image."""
    app = scope["app"]
    settings: Settings = app.state.settings
    key = header(scope, _KEY)
    check_route_key(settings, "segments", key.decode("latin-1") if key is not None else None)
    admission: Admission = app.state.segment_admission
    admission.check(requested_timeout(header(scope, _TIMEOUT), settings.segments_timeout), work=0.0)


def _thumbnail_png(bank: Bank, segment_id: int, size: int) -> bytes:
    ((crop, mask),) = _crops(bank, [segment_id])
    rgba = np.concatenate([crop, mask[..., None].astype(np.uint8) * 255], axis=2)
    small = resize_longest_side(rgba, size)
    return encode_rgba_png(small[..., :3], small[..., 3])


#: Longest side of a thumbnail, in pixels.
ThumbSize = Annotated[int, Query(ge=16, le=1024, description="Longest side of the thumbnail, pixels.")]


@router.post(
    "/batch",
    response_class=StreamingResponse,
    response_model=None,
    responses={
        200: {"model": SegmentBatchResponse, "description": "The segments, in request order (streamed)."},
        400: {"model": ErrorResponse, "description": "A body that is not JSON."},
        401: {"model": ErrorResponse, "description": "No X-API-Key, when the service has keys for `segments`."},
        403: {"model": ErrorResponse, "description": "A wrong key."},
        413: {
            "model": ErrorResponse,
            "description": "Body larger than the limit, or crops of more pixels than SIMS_MAX_BATCH_PIXELS "
            "(`batch_too_large`).",
        },
        **_ERRORS,
        503: {
            "model": ErrorResponse,
            "description": "No bank loaded yet, or refused at once (`segments_busy`, with `Retry-After`): the "
            "batches admitted would keep it past its deadline.",
        },
    },
    summary="Many segments' pixels and metadata in one request",
)
async def segments_batch(
    request: Request,
    body: SegmentBatchRequest,
    holder: HolderDep,
    settings: SettingsDep,
    _: SegmentsKeyDep,
    version: VersionQuery = None,
) -> Response:
    """Metadata and RGBA crop (base64 PNG, alpha = mask) of every id, in request order.

    What a synthesis worker reads a layout's chosen segments with: one request instead of two
    per segment, each source image decoded once. 404 if any id is not in the version; 413 if
    their crops hold more than SIMS_MAX_BATCH_PIXELS pixels. Needs an `X-API-Key` when the service
    has keys for `segments`. Admitted like a synthesis: a batch predicted to finish after its
    deadline (SIMS_SEGMENTS_TIMEOUT, or the client's `X-SIMS-Timeout`) behind the batches admitted
    is refused at once with 503 and `Retry-After`. The JSON is streamed, a few dozen segments at a time.
    """
    bank = await to_thread.run_sync(holder.bank_for, version)
    for sid in body.ids:
        _check_id(bank, sid)
    pixels, images = batch_size(bank, body.ids)
    if pixels > settings.max_batch_pixels:
        raise ApiError(
            413,
            "batch_too_large",
            f"the crops of these {len(body.ids)} segments hold {pixels} pixels, more than the limit of "
            f"{settings.max_batch_pixels} (SIMS_MAX_BATCH_PIXELS): ask for them in smaller batches",
        )
    admission: Admission = request.app.state.segment_admission
    timeout = requested_timeout(request.headers.get(TIMEOUT_HEADER), settings.segments_timeout)
    ticket = admission.admit(timeout, work=images + CROP_MPX_WORK * pixels / 1e6)
    stream = _BatchStream(bank, body.ids, ticket)
    try:
        ticket.start()
        # The first chunk before the response starts: a storage failure here is still a clean 503.
        first = stream.head() + (await to_thread.run_sync(stream.chunk, 0) if stream.count else b"")
    except BaseException:
        ticket.release()
        raise
    if stream.count <= 1:
        ticket.finish()
        return bank_response(first + b"]}", "application/json", bank.version)
    return StreamingResponse(
        stream.body(first), media_type="application/json", headers={BANK_VERSION_HEADER: bank.version}
    )


# Before `/{segment_id}`: otherwise `GET /segments/batch` would be a segment id that is not a number.
@router.api_route("/batch", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def segments_batch_other_methods() -> None:
    """``/segments/batch`` takes only POST: 405 with ``Allow``."""
    raise ApiError(405, "method_not_allowed", "/segments/batch takes only POST", headers={"Allow": "POST"})


@router.get(
    "/{segment_id}/thumbnail",
    **file_route("image/png", "RGBA PNG: the crop scaled to `size` on its longest side, alpha = mask.", _ERRORS),
    summary="A segment's thumbnail",
)
async def segment_thumbnail(
    segment_id: SegmentIdPath, holder: HolderDep, size: ThumbSize = 96, version: VersionQuery = None
) -> Response:
    """The segment's bounding-box crop of its source photo, alpha = mask, longest side `size`."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    png = await to_thread.run_sync(_thumbnail_png, bank, segment_id, size)
    return bank_response(png, "image/png", bank.version)


@router.get(
    "/{segment_id}",
    **file_route(
        "image/png", "The segment's bounding-box crop as RGBA; alpha is 255 on the mask, 0 elsewhere.", _ERRORS
    ),
    summary="A segment's pixels",
)
async def segment_png(segment_id: SegmentIdPath, holder: HolderDep, version: VersionQuery = None) -> Response:
    """The colour crop of a segment over its bounding box, with alpha = its mask."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    png = await to_thread.run_sync(_crop_png, bank, segment_id)
    return bank_response(png, "image/png", bank.version)


@router.get("/{segment_id}/meta", response_model=SegmentMeta, responses=_ERRORS, summary="A segment's metadata")
async def segment_meta(segment_id: SegmentIdPath, holder: HolderDep, version: VersionQuery = None) -> SegmentMeta:
    """What the bank's segment table records about a segment."""
    bank = await to_thread.run_sync(holder.bank_for, version)
    _check_id(bank, segment_id)
    return _meta(bank, segment_id)
