"""``create_worker_app(settings)``: the synthesis worker as a FastAPI app (``sims worker``).

Internal API, called by the retrieval service's ``POST /synthesize``:

- ``POST /synthesize``: JSON :class:`~retrieval_service.http_models.SynthesizeRequest` in; the
  PNG, JSON or multipart reply of :mod:`synthesis.worker.reply` out. Admitted before its body is
  read by a :class:`~synthesis.worker.runtime.SynthesisSlots` (503 ``synthesis_busy`` with
  ``Retry-After`` when every slot and the queue are taken, or when it would not finish within its
  deadline: the worker's ``timeout``, or the caller's ``X-SIMS-Timeout`` or ``timeout_s`` when
  shorter). Every answer carries ``X-SIMS-Slots`` (its slots and queue), from which the service's
  mirror of the worker admits what the worker would.
- ``GET /livez``: the process answers. ``GET /readyz``: 200 once the networks are loaded and the
  retrieval service has described its bank; 503 (with the reason) before.

The worker retrieves and reads segments through the service's HTTP API
(:mod:`synthesis.remote`), so it needs no bank of its own, and it never imports the service's
app or engine. Startup never blocks on the service: the worker keeps asking for ``GET /bank``
every second until it answers. Errors are :class:`~memory_bank.errors.SimsError` answered
through the service's own error table (:mod:`retrieval_service.http_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import torch
from anyio import to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_bank.errors import TimedOutError, UnavailableError, UpstreamError
from memory_bank.png import LayoutSpec, png_from_base64
from retrieval_service.admission import (
    ADMITTED_HEADER,
    SLOTS_HEADER,
    TIMEOUT_HEADER,
    requested_timeout,
    slots_header,
)
from retrieval_service.asgi import HttpMiddleware
from retrieval_service.client import RetrievalClient, ServiceError
from retrieval_service.http_errors import install_error_handlers
from retrieval_service.http_models import ErrorResponse, Liveness, Readiness, SynthesizeRequest
from retrieval_service.types import SynthesizeOptions
from synthesis.pipeline import Networks, SynthesisPipeline
from synthesis.remote import layout_spec, remote_builder
from synthesis.worker.runtime import SynthesisSlots, load_networks, synthesize_reply
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Seconds between attempts to reach the retrieval service at startup.
RETRY_SECONDS = 1.0
#: Seconds a 504 waits for its timed-out synthesis to stop (at its next pipeline step), so that the
#: worker answers once the slot is free again and the service's mirror frees it at the same time.
STOP_LINGER = 10.0

_SYNTHESIS_ERRORS = {
    422: "A bad request body, layout or option, or a bad X-SIMS-Timeout.",
    502: "The retrieval service failed.",
    503: "Not ready yet (`worker_not_ready`), or refused (`synthesis_busy`, with `Retry-After`): every slot and "
    "the queue are taken, or the synthesis would not finish within its deadline.",
    504: "The synthesis (or the retrieval service) did not finish within the deadline.",
}
_SYNTHESIZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _SYNTHESIS_ERRORS.items()
}


class SlotsHeaderMiddleware(HttpMiddleware):
    """Adds :data:`~retrieval_service.admission.SLOTS_HEADER` to every answer of ``/synthesize``."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        super().__init__(app)
        self.header = (SLOTS_HEADER.lower().encode(), value.encode())

    def applies(self, scope: Scope) -> bool:
        return scope["path"] == "/synthesize"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_slots(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_slots)


@dataclass
class WorkerState:
    """What the worker has loaded so far."""

    networks: Networks | None = None
    pipeline: SynthesisPipeline | None = None
    spec: LayoutSpec | None = None  # what the service's bank accepts as a layout
    version: str | None = None  # the bank version the service described at startup
    error: str | None = None  # why it is not ready, if it failed


def create_worker_app(
    settings: WorkerSettings | None = None,
    *,
    client: RetrievalClient | None = None,
    networks: Networks | None = None,
) -> FastAPI:
    """The worker app for ``settings`` (default: ``SIMS_WORKER_*``).

    ``client`` (e.g. over a test client of the service) and ``networks`` replace what the
    settings would build; nothing is loaded before the app starts.
    """
    settings = settings or WorkerSettings()
    state = WorkerState()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        app.state.slots = SynthesisSlots(settings.concurrency, settings.queue)
        key = settings.api_key.get_secret_value() if settings.api_key else None
        # No retries: a refusal of the service (busy, its storage failing) is passed on within the deadline.
        service = client or RetrievalClient(
            settings.service_url, timeout=settings.service_timeout, api_key=key, retries=0
        )
        task = asyncio.create_task(_prepare(state, settings, service, networks))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            app.state.slots.close()
            if client is None:
                service.close()

    app = FastAPI(title="SIMS synthesis worker", version="1.0.0", lifespan=lifespan)
    app.state.worker = state
    app.state.settings = settings
    install_error_handlers(app)
    # Every answer of /synthesize, refusals included, says the worker's slots and queue.
    app.add_middleware(SlotsHeaderMiddleware, value=slots_header(settings.concurrency, settings.queue))

    @app.get("/livez", response_model=Liveness)
    async def livez() -> Liveness:
        """Always 200 while the event loop runs."""
        return Liveness()

    @app.get("/readyz", response_model=Readiness)
    async def readyz() -> Response:
        """200 once the networks are loaded and the retrieval service has described its bank."""
        if state.pipeline is None:
            why = state.error or ("loading the networks" if state.networks is None else "waiting for the service")
            return JSONResponse(Readiness(ready=False, message=why).model_dump(), status_code=503)
        return JSONResponse(Readiness(ready=True, version=state.version, message="ready").model_dump())

    @app.post("/synthesize", response_class=Response, responses=_SYNTHESIZE_RESPONSES)
    async def synthesize(request: Request) -> Response:
        """Synthesize one layout (internal: the retrieval service's ``/synthesize`` calls this)."""
        pipeline, spec = state.pipeline, state.spec
        if pipeline is None or spec is None:
            why = state.error or "the worker is still starting"
            raise UnavailableError(why, kind="worker_not_ready", retry_after=1)
        slots: SynthesisSlots = request.app.state.slots
        # Admitted (or refused) before the body is read: the deadline is the header's; a request the
        # service's mirror of these slots admitted is checked against the slots and queue only.
        timeout = requested_timeout(request.headers.get(TIMEOUT_HEADER), settings.timeout)
        ticket = slots.admit(timeout, upstream=ADMITTED_HEADER in request.headers)
        try:
            try:
                req = SynthesizeRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise RequestValidationError([{**x, "loc": ("body", *x["loc"])} for x in e.errors()]) from None
            options = SynthesizeOptions.model_validate(req.model_dump(exclude={"layout_png", "instances_png"}))
            if options.timeout_s is not None:
                ticket.narrow(options.timeout_s)
            png = png_from_base64(req.layout_png)
            instances = png_from_base64(req.instances_png, "instances_png") if req.instances_png else None
            reply = await slots.run(
                partial(synthesize_reply, instances_png=instances),
                pipeline,
                png,
                options,
                spec,
                ticket=ticket,
                linger=STOP_LINGER,
            )
        except ServiceError as e:
            # The retrieval service refused: its 4xx (and 503, 504) are passed on, its other failures are a 502.
            raise UpstreamError(f"retrieval service: {e.message}", kind=e.error, status=e.status) from None
        except httpx.TimeoutException:
            raise TimedOutError("the retrieval service did not answer in time", kind="retrieval_timeout") from None
        except httpx.TransportError as e:
            raise UnavailableError(f"the retrieval service is unreachable: {e}", kind="retrieval_unavailable") from None
        finally:
            ticket.drop()
        return Response(reply.content, media_type=reply.media_type, headers=reply.headers)

    return app


async def _prepare(
    state: WorkerState, settings: WorkerSettings, service: RetrievalClient, networks: Networks | None
) -> None:
    """Load the networks, then wait for the service's bank and build the pipeline."""
    try:
        state.networks = networks or await to_thread.run_sync(load_networks, settings)
    except Exception as e:
        state.error = f"loading the networks failed: {e}"
        log.error("%s", state.error)
        return
    while True:
        try:
            info = await to_thread.run_sync(service.bank)
            pipeline = state.networks.pipeline(remote_builder(service, info=info))
        except (ServiceError, httpx.TransportError) as e:
            state.error = f"waiting for the retrieval service at {settings.service_url}: {e}"
            await asyncio.sleep(RETRY_SECONDS)
            continue
        except Exception as e:  # e.g. a network for other classes than the bank's
            state.error = f"the networks do not fit the service's bank: {e}"
            log.error("%s", state.error)
            return
        state.spec, state.version, state.pipeline, state.error = (
            layout_spec(info),
            info.version,
            pipeline,
            None,
        )
        log.info("worker ready: bank %s (%d classes) at %s", info.version, len(info.classes), settings.service_url)
        return
