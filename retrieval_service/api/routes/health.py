"""``/livez``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from retrieval_service.api.deps import MetricsDep
from retrieval_service.api.metrics import CONTENT_TYPE
from retrieval_service.http_models import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=Liveness, summary="The process answers")
async def livez() -> Liveness:
    """Always 200 while the event loop runs."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Bank and indexes not loaded (yet, or loading failed)."}},
    summary="The bank and its indexes are loaded",
)
async def readyz(request: Request) -> Response:
    """200 once a bank version and its indexes are loaded and warmed, 503 before."""
    holder = request.app.state.holder
    if holder is None:
        body = Readiness(ready=False, message="no bank configured: pass --bank or set SIMS_BANK")
        return JSONResponse(body.model_dump(), status_code=503)
    state = holder.current
    if state is None:
        why = f"loading the bank failed: {holder.error}" if holder.error else "loading the bank"
        return JSONResponse(Readiness(ready=False, message=why).model_dump(), status_code=503)
    return JSONResponse(Readiness(ready=True, version=state.version, message="ready").model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def metrics(metrics: MetricsDep) -> Response:
    """Counters, gauges and histograms in the Prometheus text format."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
