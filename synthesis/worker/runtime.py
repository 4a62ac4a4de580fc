"""What a worker loads once (the networks) and does per request (decode, synthesize, encode).

The HTTP worker (:mod:`synthesis.worker.app`) and the in-process backend
(:mod:`synthesis.worker.backend`) differ only in where retrieval and segments come from: both
load :class:`~synthesis.pipeline.Networks` with :func:`load_networks`, assemble their pipeline
with :meth:`~synthesis.pipeline.Networks.pipeline` and answer through :func:`synthesize_reply`,
so the same request gives the same bytes either way.

Both also admit work through one :class:`SynthesisSlots`: at most ``concurrency`` syntheses run
and at most ``queue`` wait, and only those predicted to finish within their deadline are admitted
(:mod:`retrieval_service.admission`); the rest are refused at once with 503 ``synthesis_busy`` and
a ``Retry-After``. A request past its deadline gets its 504 at once, and its synthesis stops at the
pipeline's next step (:class:`~synthesis.pipeline.Deadline`). Its slot is free again only then, so
timed-out work never piles up behind the limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from memory_bank.errors import TimedOutError, UnavailableError
from memory_bank.png import DecodedLayout, LayoutSpec, decode_layout
from retrieval_service.admission import Admission, Ticket
from retrieval_service.types import SynthesisReply, SynthesizeOptions
from synthesis.canvas.elision import ElisionConfig
from synthesis.pipeline import Deadline, Networks, SynthesisOutput, SynthesisPipeline, SynthesisStoppedError
from synthesis.worker.reply import encode_reply
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Largest layout a worker decodes (width x height).
MAX_LAYOUT_PIXELS = 16 * 1024 * 1024


def load_networks(settings: WorkerSettings, weights: Path | None = None) -> Networks:
    """Load every network the settings name (``weights`` overrides ``settings.weights``)."""
    start = time.perf_counter()
    weights = Path(weights or settings.weights)
    if not (weights / "config.json").is_file():
        raise FileNotFoundError(
            f"no synthesis network in {weights} (config.json + model.safetensors); pass --weights DIR"
        )
    networks = Networks.from_pretrained(
        weights,
        refiner=settings.refine_weights,
        transform=settings.transform_weights,
        ordering=settings.ordering_weights,
        device=settings.device,
        elision=ElisionConfig(band=settings.elision_band, white_fraction=settings.elision_rate),
    )
    if not settings.seam_blend:
        networks.generator.seam_blend = None
    log.info(
        "loaded synthesis network %s (%dx%d%s), refiner %s, aligner %s, orderer %s in %.2f s",
        weights,
        *networks.generator.resolution,
        ", parametric" if networks.generator.parametric else "",
        settings.refine_weights or "off",
        settings.transform_weights or "identity",
        settings.ordering_weights or "layout rule",
        time.perf_counter() - start,
    )
    return networks


def synthesize(
    pipeline: SynthesisPipeline,
    layout: np.ndarray,
    options: SynthesizeOptions,
    stop: Deadline | None = None,
    instances: np.ndarray | None = None,
    checked: bool = False,
) -> SynthesisOutput:
    """Run the pipeline on an (H, W) uint8 layout (and its instance map) with a request's options
    (the elision defaults to the pipeline's); ``checked``: the layout came from
    :func:`~memory_bank.png.decode_layout`, which validated it."""
    elision = pipeline.builder.options.elision.with_overrides(options.elision_band, options.elision_rate)
    return pipeline(
        layout,
        k=options.k,
        seed=options.seed,
        coarse=options.coarse,
        mode=options.mode,
        elision=elision,
        pins={int(c): s for c, s in options.pins.items()},
        candidates=options.candidates,
        stop=stop,
        instances=instances,
        exclude_images=options.exclude_images,
        checked=checked,
    )


def synthesize_reply(
    pipeline: SynthesisPipeline,
    png: bytes,
    options: SynthesizeOptions,
    spec: LayoutSpec,
    stop: Deadline | None = None,
    instances_png: bytes | None = None,
    decoded: DecodedLayout | None = None,
) -> SynthesisReply:
    """Decode a layout PNG, synthesize and encode the reply at the layout's size (blocking; run it in a worker thread).

    ``spec`` is the bank's (resolution, class colours, dataset ids), which the request's layout
    options read the layout against. Raises :class:`~memory_bank.errors.LayoutError` (422, 413
    when too large) for a layout that does not fit the bank, and
    :class:`~synthesis.pipeline.SynthesisStoppedError` (504) once ``stop`` says so. ``instances_png``
    is the layout's instance map PNG, if any. ``decoded``: the same PNG already decoded against
    ``spec`` by the caller (the service's route, in process), which is then not decoded again.
    """
    start = time.perf_counter()
    layout = decoded or decode_layout(
        png, spec, max_pixels=MAX_LAYOUT_PIXELS, options=options.layout_options(), instances=instances_png
    )
    decoded = time.perf_counter() - start
    output = synthesize(pipeline, layout.label, options, stop, layout.instances, checked=True)
    if stop is not None:
        stop.check("encode")
    return encode_reply(
        output, options, spec.classes, pipeline.generator.resolution, decode_seconds=decoded, size=layout.size
    )


class SynthesisSlots(Admission):
    """The deadline-aware :class:`~retrieval_service.admission.Admission` of syntheses (at most
    ``queue`` wait), which runs what it admits on ``concurrency`` threads of its own (:meth:`run`).

    A request is admitted (:meth:`admit`, before its body is read) only if, at the measured time
    per synthesis and behind the syntheses running or waiting, it is predicted to finish within
    its deadline; the rest are refused at once with 503 ``synthesis_busy`` and a ``Retry-After``
    from the same prediction (a server-wide limit, not the caller's fault: so 503, not 429). A
    synthesis counts against the limit until its thread returns, including after its caller timed
    out: a timed-out request cancels its :class:`~synthesis.pipeline.Deadline`, gets its 504 at
    once, and its work stops at the next pipeline step.
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError(f"need concurrency >= 1 and queue >= 0, got {concurrency} and {queue}")
        super().__init__(concurrency, queue, kind="synthesis_busy", what="synthesis")
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="synthesis")

    def check_capacity(self, timeout: float = math.inf) -> None:
        """Raise the 503 ``synthesis_busy`` now if a synthesis due within ``timeout`` would be refused."""
        self.check(timeout)

    async def run(
        self,
        fn: Callable[..., SynthesisReply],
        *args: object,
        timeout: float | None = None,
        ticket: Ticket | None = None,
        linger: float = 0.0,
    ) -> SynthesisReply:
        """``fn(*args, stop=deadline)`` on a synthesis thread, admitted by ``ticket`` (or admitted
        now, due within ``timeout``); 503 when refused, 504 once the deadline passes.

        ``linger``: seconds the 504 may wait for a timed-out synthesis to stop (0: answer at once).
        The HTTP worker waits, so that it answers only once its slot is free again: the service's
        mirror of the slots then frees it at the same moment.
        """
        if ticket is None:
            if timeout is None:
                raise ValueError("run() needs a ticket or a timeout")
            ticket = self.admit(timeout)
        ticket.claim()
        remaining = ticket.remaining()
        if remaining <= 0:  # e.g. its upload took all of its time
            ticket.release()
            raise TimedOutError(f"synthesis took longer than {ticket.timeout:g} s", kind="synthesis_timeout")
        deadline = Deadline(remaining)
        try:
            job = self._executor.submit(self._call, fn, args, deadline, ticket)
        except RuntimeError:  # shut down
            ticket.release()
            raise UnavailableError("synthesis is shutting down", kind="synthesis_unavailable", retry_after=1) from None
        # A job cancelled before it started frees its place here (one that ran, in _call).
        job.add_done_callback(lambda _: ticket.release())
        try:
            # No shield: cancelling the wait cancels a job that has not started yet.
            return await asyncio.wait_for(asyncio.wrap_future(job), remaining)
        except TimeoutError:
            deadline.cancel()
            if linger > 0:
                await asyncio.wait([asyncio.wrap_future(job)], timeout=linger)  # it stops at its next step
            raise TimedOutError(f"synthesis took longer than {ticket.timeout:g} s", kind="synthesis_timeout") from None
        except asyncio.CancelledError:  # the client went away
            deadline.cancel()
            raise

    def _call(
        self, fn: Callable[..., SynthesisReply], args: tuple[object, ...], deadline: Deadline, ticket: Ticket
    ) -> SynthesisReply:
        deadline.check("decode")  # waited in the queue past its deadline: do nothing
        ticket.start()
        start = time.perf_counter()
        try:
            reply = fn(*args, stop=deadline)
        except SynthesisStoppedError:
            ticket.finish_partial(time.perf_counter() - start)
            raise
        except BaseException:
            ticket.release()  # e.g. a bad layout: says nothing about the time a synthesis takes
            raise
        ticket.finish(time.perf_counter() - start)
        return reply

    def close(self) -> None:
        """Cancel the waiting jobs and stop the threads once the running ones return (does not wait)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
