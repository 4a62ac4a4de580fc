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

from memory_bank.errors import UnavailableError
from memory_bank.png import LayoutSpec, decode_layout
from retrieval_service.api.deps import SettingsDep, SynthesizeKeyDep, get_holder
from retrieval_service.api.requests import (
    layout_request_body,
    layout_request_errors,
    parse_ids,
    parse_pins,
    read_layout_request,
    split_list,
)
from retrieval_service.http_models import SynthesizeRequest, SynthesizeResponse, SynthesizeUpload
from retrieval_service.types import SynthesizeOptions

router = APIRouter(tags=["synthesis"])

_OPTION_FIELDS = ("k", "seed", "mode", "coarse", "elision_band", "elision_rate", "format", "candidates")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SynthesizeResponse,
        "content": {"image/png": _BINARY, "multipart/mixed": _BINARY},
        "description": "`image/png` (format `png`, the default without extras), `application/json` (`json`) or "
        "`multipart/mixed` (`multipart`: parts `image`, the extras and `meta`, the JSON without base64 fields).",
    },
    **layout_request_errors(
        {
            401: "No X-API-Key, when the service has keys for `synthesize`.",
            403: "A wrong key.",
            502: "The synthesis worker failed.",
            503: "No synthesis worker is configured or up, or no bank is loaded, or every synthesis slot and "
            "the queue are taken (`synthesis_busy`, with `Retry-After`).",
            504: "The synthesis worker did not answer in time.",
        }
    ),
}


@router.post(
    "/synthesize",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=layout_request_body(SynthesizeRequest, SynthesizeUpload),
    summary="Synthesize a photo from a layout",
)
async def synthesize(request: Request, settings: SettingsDep, _: SynthesizeKeyDep) -> Response:
    """A photograph for a layout, at the layout's size.

    Send the layout like to `/retrieve` (JSON `layout_png`, or a multipart file `layout`; its instance
    map, if any, as `instances_png` or file `instances`) with
    `seed` (diversity: it picks among the top-`k` segments), `coarse` (refine a coarse layout
    first) and `extras` (`canvas`, `provenance`, `segments`, `layout`, `components`). The answer is
    a PNG, or JSON with base64 PNGs, or multipart (`format`). Headers: `X-SIMS-Bank-Version`,
    `X-SIMS-Seed`, and `Server-Timing` with the time of each step (`retrieve`, `canvas`, `network`, ...).

    `pins` paints chosen components with chosen bank segments (the others still follow the seed),
    `candidates` lists each component's top matches in the JSON `components`, and the layout
    options (`layout_resize`, `layout_colors`, `dataset_ids`) accept other layouts. The same
    layout, options, seed, pins and bank version give the same image bytes.
    """
    start = time.perf_counter()
    backend = getattr(request.app.state, "synthesis", None)
    if backend is None:
        raise UnavailableError(
            "no synthesis worker is configured: set SIMS_SYNTHESIS_URL to `sims worker` URL(s), "
            "or run `sims serve --with-worker`",
            kind="synthesis_unavailable",
        )
    # Shed load first: a backend that knows it is full (the in-process one) refuses before the body
    # is parsed and decoded, so refused requests cost the admitted ones little CPU.
    if (check_capacity := getattr(backend, "check_capacity", None)) is not None:
        check_capacity()
    png, instances, options, _ = await read_layout_request(
        request,
        json_model=SynthesizeRequest,
        options_model=SynthesizeOptions,
        fields=_OPTION_FIELDS,
        list_fields={"extras": split_list, "pins": parse_pins, "exclude_images": parse_ids},
    )
    spec = LayoutSpec.from_manifest(get_holder(request).require().bank.manifest)
    await to_thread.run_sync(
        lambda: decode_layout(
            png, spec, max_pixels=settings.max_layout_pixels, options=options.layout_options(), instances=instances
        )
    )
    # Only backends that take instance maps are handed one (a plugin may predate them).
    reply = await (backend.synthesize(png, options, instances) if instances else backend.synthesize(png, options))
    headers = {k.lower(): v for k, v in reply.headers.items()}
    service = f"service;dur={(time.perf_counter() - start) * 1000:.1f}"
    headers["server-timing"] = f"{headers['server-timing']}, {service}" if headers.get("server-timing") else service
    return Response(reply.content, media_type=reply.media_type, headers=headers)
