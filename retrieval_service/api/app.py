"""``create_app(settings)``: the retrieval service as a FastAPI app.

Nothing heavy happens at import or in ``create_app``: the bank and its engine load in the
lifespan (in the background unless ``wait_for_bank``), so the OpenAPI spec and tests need no
bank and ``/livez`` answers while the bank loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import faiss
from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from retrieval_service.admission import Admission
from retrieval_service.api.engines import Engines
from retrieval_service.api.limits import AdmissionMiddleware, BodyLimitsMiddleware, RateLimitMiddleware, document_limits
from retrieval_service.api.metrics import MetricsMiddleware, ServiceMetrics
from retrieval_service.api.pages import install_offline_docs, install_studio
from retrieval_service.api.routes import admin, bank, health, images, retrieve, segments, synthesize
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder
from retrieval_service.api.synthesis import load_backend
from retrieval_service.bank_state import load_state
from retrieval_service.http_errors import install_error_handlers
from retrieval_service.http_models import API_KEY_HEADER

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"

_DESCRIPTION = """\
Retrieval of real photo segments for semantic layouts (SIMS, Qi et al. CVPR 2018).

Post a layout (a PNG label map at the bank's resolution) to `/retrieve`; fetch the pixels of
any candidate with `/segments/{id}`; post it to `/synthesize` for a photograph (needs a synthesis
worker). Every error is a JSON body `{error, message, details}`. SIMS Studio, a page to paint
layouts and choose their segments, is served at `/`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app for ``settings`` (default: read from ``SIMS_*`` environment variables)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    engines = Engines(settings)
    loader = functools.partial(load_state, engines=engines)
    holder = BankHolder(settings.bank, loader) if settings.bank is not None else None
    if holder is not None:
        holder.listeners.append(metrics.bank_loaded)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Concurrent requests share the cores: one thread per op in FAISS, as the engine does for torch.
        faiss.omp_set_num_threads(1)
        app.state.retrieve_limiter = CapacityLimiter(settings.retrieve_concurrency)
        tasks: list[asyncio.Task] = []
        # The synthesis backend (workers over HTTP, or an in-process plugin); loaded here, not at import.
        backend = load_backend(settings, holder)
        if backend is not None:
            await backend.start()
        app.state.synthesis = backend
        if backend is not None:
            metrics.watch_synthesis(backend)
        if holder is None:
            log.error("no bank configured: pass --bank or set SIMS_BANK; /readyz will stay 503")
        else:
            if settings.wait_for_bank:
                await _initial_load(holder, metrics, raise_errors=True)
            else:
                tasks.append(asyncio.create_task(_initial_load(holder, metrics, raise_errors=False)))
            if settings.watch_interval > 0:
                tasks.append(asyncio.create_task(holder.watch(settings.watch_interval)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if backend is not None:
                await backend.close()
            await to_thread.run_sync(engines.close)

    app = FastAPI(
        title="SIMS retrieval service",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        # Served from local assets by install_offline_docs: the defaults load Swagger UI from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.holder = holder
    install_error_handlers(app)
    # Segment batches are admitted like syntheses: as many run as retrievals may, as many wait.
    app.state.segment_admission = Admission(
        settings.retrieve_concurrency, settings.retrieve_concurrency, kind="segments_busy", what="segment batch"
    )
    # Added last = outermost: metrics also see the 413s and 429s the limits answer themselves.
    app.add_middleware(BodyLimitsMiddleware, max_bytes=settings.max_upload_bytes, chunk_timeout=settings.body_timeout)
    # Outside the body limits: the queue state decides first, then Content-Length.
    gates = {"/synthesize": synthesize.admit, "/segments/batch": segments.admit_batch}
    app.add_middleware(AdmissionMiddleware, gates=gates, hold=settings.refusal_hold)
    if settings.rate_limit:
        # Outside the body limits: a client over its rate is refused before any of its body is read.
        app.add_middleware(RateLimitMiddleware, rate=settings.rate_limit, storage_uri=settings.rate_limit_storage)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origin_list:
        # Outermost, so that every answer, the size limit's 413 included, carries the CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER],
            expose_headers=["X-SIMS-Bank-Version", "X-SIMS-Seed", "Server-Timing"],
        )
    for module in (retrieve, segments, images, bank, synthesize, admin, health):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # built once, with the middleware's answers added
            app.openapi_schema = document_limits(FastAPI.openapi(app), {"$ref": "#/components/schemas/ErrorResponse"})
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_offline_docs(app)
    install_studio(app)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory (``--factory``): each worker process builds its app from ``SIMS_*``."""
    return create_app(Settings())


async def _initial_load(holder: BankHolder, metrics: ServiceMetrics, *, raise_errors: bool) -> None:
    try:
        await holder.reload()
    except Exception as e:
        metrics.reloads.labels("failed").inc()
        log.error("could not load bank %s: %s", holder.root, e)
        if raise_errors:
            raise
    else:
        metrics.reloads.labels("switched").inc()
