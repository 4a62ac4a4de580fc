"""``POST /synthesize``: a photo for a layout, made by the configured synthesis backend.

The service reads and validates the request (the layout must fit the bank it serves: a bad one is
a 4xx before any worker is asked), then hands it to the backend of
:mod:`retrieval_service.api.synthesis`: synthesis workers over HTTP, or the in-process pipeline of
``sims serve --with-worker``. The backend's response (PNG, JSON or multipart) is passed on as is,
with ``service`` (this route's wall time, the backend included) added to its ``Server-Timing``.
"""

from __future__ import annotations

import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from retrieval_service.api.deps import SettingsDep, get_holder
from retrieval_service.api.errors import ApiError
from retrieval_service.api.layouts import decode_base64, decode_layout
from retrieval_service.api.models import (
    ErrorResponse,
    SynthesizeOptions,
    SynthesizeRequest,
    SynthesizeResponse,
    SynthesizeUpload,
)

router = APIRouter(tags=["synthesis"])

_OPTION_FIELDS = ("k", "seed", "mode", "coarse", "extras", "format")

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SynthesizeRequest.model_json_schema()},
            "multipart/form-data": {"schema": SynthesizeUpload.model_json_schema()},
        },
    }
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SynthesizeResponse,
        "content": {"image/png": _BINARY, "multipart/mixed": _BINARY},
        "description": "`image/png` (format `png`, the default without extras), `application/json` (`json`) or "
        "`multipart/mixed` (`multipart`: parts `image`, the extras and `meta`, the JSON without base64 fields).",
    },
    400: {"model": ErrorResponse, "description": "A multipart body that cannot be parsed."},
    413: {"model": ErrorResponse, "description": "Body or layout larger than the limits."},
    415: {"model": ErrorResponse, "description": "Neither JSON nor multipart."},
    422: {"model": ErrorResponse, "description": "Bad options, not a PNG label map, wrong size, unknown class ids."},
    502: {"model": ErrorResponse, "description": "The synthesis worker failed."},
    503: {"model": ErrorResponse, "description": "No synthesis worker is configured or up, or no bank is loaded."},
    504: {"model": ErrorResponse, "description": "The synthesis worker did not answer in time."},
}


@router.post(
    "/synthesize",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
    summary="Synthesize a photo from a layout",
)
async def synthesize(request: Request, settings: SettingsDep) -> Response:
    """A photograph for a layout, at the layout's size.

    Send the layout like to `/retrieve` (JSON `layout_png`, or a multipart file `layout`) with
    `seed` (diversity: it picks among the top-`k` segments), `coarse` (refine a coarse layout
    first) and `extras` (`canvas`, `provenance`, `segments`, `layout`). The answer is a PNG, or
    JSON with base64 PNGs, or multipart (`format`). Headers: `X-SIMS-Bank-Version`, `X-SIMS-Seed`,
    and `Server-Timing` with the time of each step (`retrieve`, `canvas`, `network`, ...).
    """
    start = time.perf_counter()
    backend = getattr(request.app.state, "synthesis", None)
    if backend is None:
        raise ApiError(
            503,
            "synthesis_unavailable",
            "no synthesis worker is configured: set SIMS_SYNTHESIS_URL to `sims worker` URL(s), "
            "or run `sims serve --with-worker`",
        )
    png, options = await _read_request(request)
    bank = get_holder(request).require().bank
    await to_thread.run_sync(
        lambda: decode_layout(
            png, resolution=bank.resolution, num_classes=len(bank.classes), max_pixels=settings.max_layout_pixels
        )
    )
    reply = await backend.synthesize(png, options)
    headers = {k.lower(): v for k, v in reply.headers.items()}
    service = f"service;dur={(time.perf_counter() - start) * 1000:.1f}"
    headers["server-timing"] = f"{headers['server-timing']}, {service}" if headers.get("server-timing") else service
    return Response(reply.content, media_type=reply.media_type, headers=headers)


async def _read_request(request: Request) -> tuple[bytes, SynthesizeOptions]:
    """The PNG bytes and options of a JSON or multipart request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        try:
            req = SynthesizeRequest.model_validate_json(body)
        except ValidationError as e:
            raise RequestValidationError(_located(e, "body")) from None
        options = SynthesizeOptions.model_validate(req.model_dump(exclude={"layout_png"}))
        return decode_base64(req.layout_png), options
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=len(_OPTION_FIELDS) + 2)
        except HTTPException as e:
            if e.status_code != 400:  # e.g. the 413 of the body size limit
                raise
            raise ApiError(400, "invalid_multipart", f"the multipart body could not be parsed: {e.detail}") from None
        upload = form.get("layout")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "multipart body needs a file field named 'layout' (the PNG)")
        fields: dict[str, Any] = {k: v for k in _OPTION_FIELDS if isinstance(v := form.get(k), str) and v.strip()}
        if "extras" in fields:
            fields["extras"] = [p for p in fields["extras"].replace(" ", "").split(",") if p]
        try:
            options = SynthesizeOptions.model_validate(fields)
        except ValidationError as e:
            raise RequestValidationError(_located(e, "form")) from None
        return await upload.read(), options
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send the layout as application/json or multipart/form-data, not {content_type or 'no content type'}",
    )


def _located(error: ValidationError, where: str) -> list[dict[str, Any]]:
    return [{**e, "loc": (where, *e["loc"])} for e in error.errors(include_url=False)]
