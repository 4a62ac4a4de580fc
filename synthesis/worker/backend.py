"""The in-process synthesis backend: the worker's pipeline inside the retrieval service.

``sims serve --with-worker`` sets ``SIMS_SYNTHESIS_BACKEND=in_process``; the service loads
:func:`create_backend` through the ``sims.synthesis_backends`` entry point (it never imports
``synthesis`` itself, and this module knows the service only through the protocols of
:mod:`retrieval_service.types`). Retrieval goes straight to the service's engine and segments are
read from its bank through a per-version :class:`~synthesis.canvas.segment_cache.CachedSegments`:
no HTTP hop. Replies are made by the same :func:`~synthesis.worker.runtime.synthesize_reply` as the
HTTP worker's, admitted by the same :class:`~synthesis.worker.runtime.SynthesisSlots`: the route
asks :meth:`InProcessBackend.admit` before it reads the upload, and a synthesis that would not
finish within its deadline (the service's ``synthesis_timeout``, or the client's when shorter) is
refused with 503 and ``Retry-After``; one that runs late is a 504, its work stopping at the next
pipeline step.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass
from functools import partial
from pathlib import Path

from anyio import to_thread

from memory_bank.errors import UnavailableError
from memory_bank.png import DecodedLayout, LayoutSpec
from retrieval_service.admission import Admission, Ticket
from retrieval_service.types import BackendSettings, BankSource, ServedBank, SynthesisReply, SynthesizeOptions
from synthesis.canvas.builder import CanvasBuilder
from synthesis.pipeline import Networks, SynthesisPipeline
from synthesis.worker.runtime import SynthesisSlots, load_networks, synthesize_reply
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass(eq=False, repr=False)  # a live service object: identity equality, the object repr
class InProcessBackend:
    """:class:`~retrieval_service.types.SynthesisBackend` running the pipeline in this process.

    The networks load in :meth:`start` (before the service accepts requests), unless ``networks``
    are given. One pipeline per bank version is kept, so a reload of the bank is picked up by the
    next request.
    """

    name = "in_process"
    #: The route hands it the layout it decoded, which is then not decoded again.
    takes_decoded = True

    bank: BankSource | None
    worker: WorkerSettings
    _: KW_ONLY
    weights: Path | None = None
    timeout: float = 60.0
    networks: Networks | None = None

    def __post_init__(self) -> None:
        self._pipeline: tuple[str, SynthesisPipeline] | None = None
        self.slots = SynthesisSlots(self.worker.concurrency, self.worker.queue)

    async def start(self) -> None:
        if self.networks is None:
            self.networks = await to_thread.run_sync(load_networks, self.worker, self.weights)

    async def close(self) -> None:
        self._pipeline = None
        self.slots.close()

    def pipeline_for(self, served: ServedBank) -> SynthesisPipeline:
        """The pipeline over a bank version's engine and segments (built once per version)."""
        got = self._pipeline
        if got is not None and got[0] == served.version:
            return got[1]
        if self.networks is None:
            raise UnavailableError("the synthesis networks are not loaded", kind="synthesis_unavailable")
        pipeline = self.networks.pipeline(CanvasBuilder.from_bank(served.bank, retriever=served.engine))
        self._pipeline = (served.version, pipeline)
        return pipeline

    @property
    def admission(self) -> Admission:
        """The admission of this process's syntheses (the slots')."""
        return self.slots

    def admit(self, timeout: float) -> Ticket:
        """A place for a synthesis due within ``timeout`` seconds, or the 503 ``synthesis_busy``
        (the route asks before it reads the upload)."""
        return self.slots.admit(timeout)

    def check_capacity(self) -> None:
        """503 ``synthesis_busy`` now when a synthesis would be refused."""
        self.slots.check_capacity(self.timeout)

    async def synthesize(
        self,
        layout_png: bytes,
        options: SynthesizeOptions,
        instances_png: bytes | None = None,
        *,
        ticket: Ticket | None = None,
        decoded: tuple[LayoutSpec, DecodedLayout] | None = None,
    ) -> SynthesisReply:
        """Synthesize on this process's slots. ``decoded``: the route's decoding of the PNG and the
        spec it was read against; used when that is the spec of the version served now (a reload
        in between decodes again)."""
        if self.bank is None:
            if ticket is not None:
                ticket.release()
            raise UnavailableError("no bank configured: pass --bank or set SIMS_BANK", kind="not_ready")
        served = self.bank.require()
        pipeline = self.pipeline_for(served)
        spec = LayoutSpec.from_manifest(served.bank.manifest)
        layout = decoded[1] if decoded is not None and decoded[0] == spec else None
        return await self.slots.run(
            partial(synthesize_reply, instances_png=instances_png, decoded=layout),
            pipeline,
            layout_png,
            options,
            spec,
            timeout=options.deadline(self.timeout),
            ticket=ticket,
        )


def create_backend(settings: BackendSettings, bank: BankSource | None) -> InProcessBackend:
    """Entry point ``in_process`` of ``sims.synthesis_backends``: networks from ``SIMS_WORKER_*``,
    the weights directory from the service's ``synthesis_weights`` when set."""
    return InProcessBackend(
        bank, WorkerSettings(), weights=settings.synthesis_weights, timeout=settings.synthesis_timeout
    )
