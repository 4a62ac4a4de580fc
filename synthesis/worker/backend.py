"""The in-process synthesis backend: the worker's pipeline inside the retrieval service.

``sims serve --with-worker`` sets ``SIMS_SYNTHESIS_BACKEND=in_process``; the service loads
:func:`create_backend` through the ``sims.synthesis_backends`` entry point (it never imports
``synthesis`` itself). Retrieval goes straight to the service's engine and segments are read from
its bank through a per-version :class:`~synthesis.canvas.protocols.CachedSegments`: no HTTP hop.
Replies are made by the same :func:`~synthesis.worker.runtime.synthesize_reply` as the HTTP worker's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from anyio import CapacityLimiter, fail_after, to_thread

from retrieval_service.api.errors import ApiError
from retrieval_service.api.models import SynthesizeOptions
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder, BankState
from retrieval_service.api.synthesis import SynthesisReply
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.segment_cache import CachedSegments
from synthesis.pipeline import SynthesisPipeline
from synthesis.worker.runtime import Networks, synthesize_reply
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class InProcessBackend:
    """:class:`~retrieval_service.api.synthesis.SynthesisBackend` running the pipeline in this process.

    The networks load in :meth:`start` (before the service accepts requests). One pipeline per
    bank version is kept, so a reload of the bank is picked up by the next request.
    """

    name = "in_process"

    def __init__(
        self,
        holder: BankHolder | None,
        worker: WorkerSettings,
        *,
        weights: Path | None = None,
        timeout: float = 60.0,
        networks: Networks | None = None,
    ) -> None:
        self.holder = holder
        self.worker = worker
        self.weights = weights
        self.timeout = timeout
        self.networks = networks
        self._pipeline: tuple[str, SynthesisPipeline] | None = None
        self._limiter = CapacityLimiter(worker.concurrency)

    async def start(self) -> None:
        if self.networks is None:
            self.networks = await to_thread.run_sync(Networks.load, self.worker, self.weights)

    async def close(self) -> None:
        self._pipeline = None

    def pipeline_for(self, state: BankState) -> SynthesisPipeline:
        """The pipeline over a bank version's engine and segments (built once per version)."""
        got = self._pipeline
        if got is not None and got[0] == state.version:
            return got[1]
        if self.networks is None:
            raise ApiError(503, "synthesis_unavailable", "the synthesis networks are not loaded")
        builder = CanvasBuilder(
            state.engine,
            CachedSegments(state.bank),
            classes=state.bank.classes,
            config=state.bank.config,
            resolution=state.bank.resolution,
            **self.networks.builder_kwargs(),  # type: ignore[arg-type]
        )
        pipeline = self.networks.pipeline(builder)
        self._pipeline = (state.version, pipeline)
        return pipeline

    async def synthesize(self, layout_png: bytes, options: SynthesizeOptions) -> SynthesisReply:
        if self.holder is None:
            raise ApiError(503, "not_ready", "no bank configured: pass --bank or set SIMS_BANK")
        state = self.holder.require()
        pipeline = self.pipeline_for(state)
        try:
            with fail_after(self.timeout):
                # Abandoned on timeout: the thread finishes its work, the client gets its 504 now.
                return await to_thread.run_sync(
                    synthesize_reply,
                    pipeline,
                    layout_png,
                    options,
                    state.bank.classes,
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
        except TimeoutError:
            raise ApiError(504, "synthesis_timeout", f"synthesis took longer than {self.timeout:g} s") from None


def create_backend(settings: Settings, holder: BankHolder | None) -> InProcessBackend:
    """Entry point ``in_process`` of ``sims.synthesis_backends``: networks from ``SIMS_WORKER_*``,
    the weights directory from the service's ``synthesis_weights`` when set."""
    return InProcessBackend(
        holder, WorkerSettings(), weights=settings.synthesis_weights, timeout=settings.synthesis_timeout
    )
