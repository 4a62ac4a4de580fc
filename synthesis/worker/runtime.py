"""What a worker loads once (the networks) and does per request (decode, synthesize, encode).

The HTTP worker (:mod:`synthesis.worker.app`) and the in-process backend
(:mod:`synthesis.worker.backend`) differ only in where retrieval and segments come from: both
load :class:`~synthesis.pipeline.Networks` with :func:`load_networks`, assemble their pipeline
with :meth:`~synthesis.pipeline.Networks.pipeline` and answer through :func:`synthesize_reply`,
so the same request gives the same bytes either way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from memory_bank.png import LayoutSpec, decode_layout
from retrieval_service.types import SynthesisReply, SynthesizeOptions
from synthesis.canvas.elision import ElisionConfig
from synthesis.pipeline import Networks, SynthesisOutput, SynthesisPipeline
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


def synthesize(pipeline: SynthesisPipeline, layout: np.ndarray, options: SynthesizeOptions) -> SynthesisOutput:
    """Run the pipeline on an (H, W) uint8 layout with a request's options (the elision defaults to the pipeline's)."""
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
    )


def synthesize_reply(
    pipeline: SynthesisPipeline, png: bytes, options: SynthesizeOptions, spec: LayoutSpec
) -> SynthesisReply:
    """Decode a layout PNG, synthesize and encode the reply at the layout's size (blocking; run it in a worker thread).

    ``spec`` is the bank's (resolution, class colours, dataset ids), which the request's layout
    options read the layout against. Raises :class:`~memory_bank.errors.LayoutError` (422, 413
    when too large) for a layout that does not fit the bank.
    """
    start = time.perf_counter()
    layout = decode_layout(png, spec, max_pixels=MAX_LAYOUT_PIXELS, options=options.layout_options())
    decoded = time.perf_counter() - start
    output = synthesize(pipeline, layout.label, options)
    return encode_reply(
        output, options, spec.classes, pipeline.generator.resolution, decode_seconds=decoded, size=layout.size
    )
