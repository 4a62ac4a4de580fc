"""What a worker loads once (the networks) and does per request (decode, synthesize, encode).

The HTTP worker (:mod:`synthesis.worker.app`) and the in-process backend
(:mod:`synthesis.worker.backend`) differ only in where retrieval and segments come from: both
build a :class:`~synthesis.pipeline.SynthesisPipeline` from :class:`Networks` and answer through
:func:`synthesize_reply`, so the same request gives the same bytes either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory_bank import ClassTable
from retrieval_service.api.layouts import decode_layout
from retrieval_service.api.models import SynthesizeOptions
from retrieval_service.api.synthesis import SynthesisReply
from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
from synthesis.canvas.elision import TEST_ELISION, ElisionConfig
from synthesis.canvas.protocols import Aligner, Orderer
from synthesis.pipeline import ImageGenerator, SynthesisPipeline
from synthesis.worker.reply import encode_reply
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Largest layout a worker decodes (width x height).
MAX_LAYOUT_PIXELS = 16 * 1024 * 1024


@dataclass(frozen=True)
class Networks:
    """The networks of a worker: the synthesis network, and the optional refiner, aligner and orderer."""

    generator: ImageGenerator
    refiner: Callable[[np.ndarray], np.ndarray] | None = None
    aligner: Aligner | None = None
    orderer: Orderer | None = None
    elision: ElisionConfig = TEST_ELISION

    @classmethod
    def load(cls, settings: WorkerSettings, weights: Path | None = None) -> Networks:
        """Load every network the settings name (``weights`` overrides ``settings.weights``)."""
        start = time.perf_counter()
        weights = Path(weights or settings.weights)
        if not (weights / "config.json").is_file():
            raise FileNotFoundError(
                f"no synthesis network in {weights} (config.json + model.safetensors); pass --weights DIR"
            )
        generator = ImageGenerator.from_pretrained(weights, device=settings.device)
        refiner = aligner = orderer = None
        if settings.refine_weights is not None:
            from synthesis.networks.layout_refiner import CoarseLayoutRefiner

            refiner = CoarseLayoutRefiner.from_pretrained(settings.refine_weights, device=settings.device)
        if settings.transform_weights is not None:
            from synthesis.networks.transform import TransformAligner

            aligner = TransformAligner.from_pretrained(settings.transform_weights)
        if settings.ordering_weights is not None:
            from synthesis.networks.ordering import LearnedOrderer

            orderer = LearnedOrderer.from_pretrained(settings.ordering_weights)
        log.info(
            "loaded synthesis network %s (%dx%d%s), refiner %s, aligner %s, orderer %s in %.2f s",
            weights,
            *generator.resolution,
            ", parametric" if generator.parametric else "",
            settings.refine_weights or "off",
            settings.transform_weights or "identity",
            settings.ordering_weights or "layout rule",
            time.perf_counter() - start,
        )
        elision = ElisionConfig(band=settings.elision_band, white_fraction=settings.elision_rate)
        return cls(generator, refiner, aligner, orderer, elision)

    def builder_kwargs(self) -> dict[str, object]:
        """Aligner, orderer and default elision for a :class:`~synthesis.canvas.builder.CanvasBuilder`."""
        return {"aligner": self.aligner, "orderer": self.orderer, "options": CanvasOptions(elision=self.elision)}

    def pipeline(self, builder: CanvasBuilder) -> SynthesisPipeline:
        """The pipeline over ``builder`` (made with :meth:`builder_kwargs`)."""
        return SynthesisPipeline(builder, self.generator, self.refiner)


def synthesize_reply(
    pipeline: SynthesisPipeline, png: bytes, options: SynthesizeOptions, classes: ClassTable
) -> SynthesisReply:
    """Decode a layout PNG, synthesize and encode the reply (blocking; run it in a worker thread).

    Raises :class:`~retrieval_service.api.errors.ApiError` or
    :class:`~memory_bank.errors.LayoutError` (422) for a layout that does not fit the bank.
    """
    start = time.perf_counter()
    layout = decode_layout(
        png, resolution=pipeline.builder.resolution, num_classes=len(classes), max_pixels=MAX_LAYOUT_PIXELS
    )
    decoded = time.perf_counter() - start
    elision = pipeline.builder.options.elision.with_overrides(options.elision_band, options.elision_rate)
    output = pipeline(layout, k=options.k, seed=options.seed, coarse=options.coarse, mode=options.mode, elision=elision)
    return encode_reply(output, options, classes, pipeline.generator.resolution, decode_seconds=decoded)
