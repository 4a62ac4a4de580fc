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
from starlette.types import Scope

from memory_bank.errors import UnavailableError
from memory_bank.png import LayoutSpec, decode_layout
from retrieval_service.admission import TIMEOUT_HEADER, Ticket, requested_timeout
from retrieval_service.api.deps import SettingsDep, SynthesizeKeyDep, check_route_key, get_holder
from retrieval_service.api.limits import header
from retrieval_service.api.requests import (
    layout_request_body,
    layout_request_errors,
    parse_ids,
    parse_pins,
    read_layout_request,
    split_list,
)
from retrieval_service.api.settings import Settings
from retrieval_service.http_models import API_KEY_HEADER, SynthesizeRequest, SynthesizeResponse, SynthesizeUpload
from retrieval_service.types import SynthesizeOptions

router = APIRouter(tags=["synthesis"])

_OPTION_FIELDS = ("k", "seed", "mode", "coarse", "elision_band", "elision_rate", "format", "candidates", "timeout_s")
_KEY, _TIMEOUT = API_KEY_HEADER.lower().encode(), TIMEOUT_HEADER.lower().encode()


def admit(scope: Scope) -> Ticket | None:
    """The gate of ``POST /synthesize`` (:class:`~retrieval_service.api.limits.AdmissionMiddleware`),
    from the request head alone: the key, then the deadline (the server's ``synthesis_timeout``, or
    the client's ``X-SIMS-Timeout`` when shorter), then the backend's admission (503
    ``synthesis_busy`` with ``Retry-After`` for a synthesis that would not finish in time)."""
    app = scope["app"]
    settings: Settings = app.state.settings
    key = header(scope, _KEY)
    check_route_key(settings, "synthesize", key.decode("latin-1") if key is not None else None)
    backend = getattr(app.state, "synthesis", None)
    timeout = requested_timeout(header(scope, _TIMEOUT), settings.synthesis_timeout)
    if backend is None:
        return None  # the route says why
    if (admit_backend := getattr(backend, "admit", None)) is not None:
        return admit_backend(timeout)
    if (check_capacity := getattr(backend, "check_capacity", None)) is not None:
        check_capacity()  # an older plugin: only whether it is full
    return None


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
            503: "No synthesis worker is configured or up, or no bank is loaded, or refused at once "
            "(`synthesis_busy`, with `Retry-After`): every synthesis slot and the queue are taken, or behind the "
            "work admitted it would not finish within its deadline.",
            504: "The synthesis did not finish within its deadline (`synthesis_timeout`).",
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

    The deadline is the server's synthesis timeout, or the client's when shorter (the
    `X-SIMS-Timeout` header, or `timeout_s`): a synthesis that would not finish by then, behind the
    work already admitted, is refused at once with 503 `synthesis_busy` and `Retry-After`, before
    its upload is read.
    """
    start = time.perf_counter()
    backend = getattr(request.app.state, "synthesis", None)
    if backend is None:
        raise UnavailableError(
            "no synthesis worker is configured: set SIMS_SYNTHESIS_URL to `sims worker` URL(s), "
            "or run `sims serve --with-worker`",
            kind="synthesis_unavailable",
        )
    # Admitted before the body was read (the gate); the ticket is released when the request ends.
    ticket: Ticket | None = request.scope.get("state", {}).get("admission")
    png, instances, options, _ = await read_layout_request(
        request,
        json_model=SynthesizeRequest,
        options_model=SynthesizeOptions,
        fields=_OPTION_FIELDS,
        list_fields={"extras": split_list, "pins": parse_pins, "exclude_images": parse_ids},
    )
    if ticket is not None and options.timeout_s is not None:
        ticket.narrow(options.timeout_s)  # the body's deadline, when shorter than the header's
    spec = LayoutSpec.from_manifest(get_holder(request).require().bank.manifest)
    decoded = await to_thread.run_sync(
        lambda: decode_layout(
            png, spec, max_pixels=settings.max_layout_pixels, options=options.layout_options(), instances=instances
        )
    )
    # Only backends that take them are handed the instance map (a plugin may predate them), the
    # ticket and the decoded layout (in process: so that it is decoded once).
    extra: dict[str, Any] = {} if ticket is None else {"ticket": ticket}
    if getattr(backend, "takes_decoded", False):
        extra["decoded"] = (spec, decoded)
    if instances:
        reply = await backend.synthesize(png, options, instances, **extra)
    else:
        reply = await backend.synthesize(png, options, **extra)
    headers = {k.lower(): v for k, v in reply.headers.items()}
    service = f"service;dur={(time.perf_counter() - start) * 1000:.1f}"
    headers["server-timing"] = f"{headers['server-timing']}, {service}" if headers.get("server-timing") else service
    return Response(reply.content, media_type=reply.media_type, headers=headers)
