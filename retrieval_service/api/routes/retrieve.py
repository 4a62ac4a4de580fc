"""``POST /retrieve``: top-k bank segments for every component of a layout."""

from __future__ import annotations

import dataclasses
import time

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from memory_bank.png import decode_layout_png
from retrieval_service.api.deps import LimiterDep, MetricsDep, SettingsDep, StateDep
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.requests import (
    layout_request_body,
    layout_request_errors,
    read_layout_request,
    split_list,
)
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankState
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import (
    Candidate,
    Component,
    RetrieveRequest,
    RetrieveResponse,
    RetrieveUpload,
)
from retrieval_service.types import RetrievalOptions, RetrievalResult

router = APIRouter(tags=["retrieval"])

_OPTION_FIELDS = ("k", "mode", "seed", "min_area")


@router.post(
    "/retrieve",
    response_model=RetrieveResponse,
    responses=layout_request_errors({503: "No bank loaded yet."}),
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
) -> RetrieveResponse:
    """Every connected component of the layout with its top-k candidates, best first.

    Send the layout either as JSON (`layout_png`: base64 of a PNG) or as a multipart upload
    (file field `layout`). The layout must have the bank's working resolution (`GET /bank`).
    Every response names the bank version that answered it.
    """
    png, options = await read_layout_request(
        request,
        json_model=RetrieveRequest,
        options_model=RetrievalOptions,
        fields=_OPTION_FIELDS,
        list_fields={"exclude_images": _parse_ids},
    )
    result = await to_thread.run_sync(_run, state, settings, png, options, limiter=limiter)
    _record(metrics, result)
    response.headers["X-SIMS-Bank-Version"] = result.bank_version
    return _to_response(state, result, options)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(p) for p in split_list(text)]
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"exclude_images must be comma-separated integers, got {text[:80]!r}"
        ) from None


def _run(state: BankState, settings: Settings, png: bytes, options: RetrievalOptions) -> RetrievalResult:
    """Decode, validate and retrieve (in a worker thread: all of it is CPU-bound)."""
    start = time.perf_counter()
    bank = state.bank
    layout = decode_layout_png(
        png, resolution=bank.resolution, num_classes=len(bank.classes), max_pixels=settings.max_layout_pixels
    )
    decoded = time.perf_counter() - start
    result = state.engine.retrieve(layout, options)
    result.timings["decode"] = decoded
    return result


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
            candidates=[Candidate(**dataclasses.asdict(m)) for m in c.matches],  # a Match on the wire
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
