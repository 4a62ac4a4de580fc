"""``POST /retrieve``: top-k bank segments for every component of a layout."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from memory_bank.png import LayoutOptions, LayoutSpec, decode_layout
from retrieval_service.api.deps import ApiKeyDep, LimiterDep, MetricsDep, SettingsDep, StateDep, check_route_key
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.requests import (
    layout_request_body,
    layout_request_errors,
    parse_ids,
    parse_pins,
    read_layout_request,
)
from retrieval_service.api.settings import Settings
from retrieval_service.bank_state import BankState
from retrieval_service.http_models import (
    Candidate,
    Component,
    RetrieveRequest,
    RetrieveResponse,
    RetrieveUpload,
)
from retrieval_service.types import RetrievalOptions, RetrievalResult

router = APIRouter(tags=["retrieval"])

_OPTION_FIELDS = ("k", "mode", "seed", "min_area", "choose_from")


@router.post(
    "/retrieve",
    response_model=RetrieveResponse,
    responses=layout_request_errors(
        {
            401: "mode=full without X-API-Key, when the service has keys for `full`.",
            403: "mode=full with a wrong key.",
            503: "No bank loaded yet.",
        }
    ),
    openapi_extra=layout_request_body(RetrieveRequest, RetrieveUpload),
    summary="Retrieve bank segments for a layout",
)
async def retrieve(
    request: Request,
    response: Response,
    state: StateDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    metrics: MetricsDep,
    api_key: ApiKeyDep,
) -> RetrieveResponse:
    """Every component of the layout with its top-k candidates, best first.

    Send the layout either as JSON (`layout_png`: base64 of a PNG) or as a multipart upload
    (file field `layout`), optionally with its instance map (`instances_png`, file field
    `instances`; on a bank built with instances each thing instance is one component, on others
    it is ignored). The layout must have the bank's working resolution (`GET /bank`)
    unless `layout_resize`; boxes are at the bank's resolution. Every response names the bank
    version that answered it. `mode=full` needs an `X-API-Key` when the service has keys for it.
    """
    png, instances, options, layout = await read_layout_request(
        request,
        json_model=RetrieveRequest,
        options_model=RetrievalOptions,
        fields=_OPTION_FIELDS,
        list_fields={"exclude_images": parse_ids, "pins": parse_pins},
    )
    if options.mode == "full":  # seconds of CPU per layout: the one retrieval mode a key can guard
        check_route_key(settings, "full", api_key)
    run = _run(state, settings, png, instances, options, layout.layout_options())
    result = await to_thread.run_sync(run, limiter=limiter)
    _record(metrics, result)
    response.headers["X-SIMS-Bank-Version"] = result.bank_version
    return _to_response(state, result, options)


def _run(
    state: BankState,
    settings: Settings,
    png: bytes,
    instances: bytes | None,
    options: RetrievalOptions,
    layout: LayoutOptions,
) -> Callable[[], RetrievalResult]:
    """Decode, validate and retrieve (to run in a worker thread: all of it is CPU-bound)."""

    def run() -> RetrievalResult:
        start = time.perf_counter()
        spec = LayoutSpec.from_manifest(state.bank.manifest)
        decoded_layout = decode_layout(
            png, spec, max_pixels=settings.max_layout_pixels, options=layout, instances=instances
        )
        decoded = time.perf_counter() - start
        result = state.engine.retrieve(decoded_layout.label, options, decoded_layout.instances, checked=True)
        result.timings["decode"] = decoded
        return result

    return run


def _record(metrics: ServiceMetrics, result: RetrievalResult) -> None:
    metrics.retrieve_seconds.labels(result.mode).observe(sum(result.timings.values()))
    for comp in result.components:
        metrics.components.labels(str(comp.status)).inc()


def _to_response(state: BankState, result: RetrievalResult, options: RetrievalOptions) -> RetrieveResponse:
    names = state.bank.classes.names
    h, w = state.bank.resolution
    components = [
        Component(
            id=c.component_id,
            class_id=c.class_id,
            class_name=names[c.class_id],
            bbox=list(c.bbox),
            area=c.area,
            status=str(c.status),  # type: ignore[arg-type]
            choice=c.choice,
            candidates=[  # a Match on the wire
                Candidate(**dataclasses.asdict(m), image_name=result.image_names.get(m.image_id)) for m in c.matches
            ],
        )
        for c in result.components
    ]
    return RetrieveResponse(
        bank_version=result.bank_version,
        mode=result.mode,
        k=options.k,
        height=h,
        width=w,
        components=components,
        timings_ms={k: round(v * 1000, 3) for k, v in result.timings.items()},
    )
