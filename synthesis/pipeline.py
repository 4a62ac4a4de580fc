"""The SIMS pipeline: a layout in, a photograph out (paper §4-§5).

``SynthesisPipeline(builder, generator, refiner=None)(layout, k=5, seed=0, coarse=False)`` runs

1. check the layout; 2. refine it if it is coarse; 3. build the canvas (retrieve, align, order,
paste, elide: :class:`~synthesis.canvas.builder.CanvasBuilder`); 4. synthesize the photo with the
network; 5. bring it back to the layout's size.

The network works at its own resolution (``config.json``'s ``resolution``, e.g. 192x256): the
layout, canvas and missing mask are resized to it exactly as the training data was
(:func:`~synthesis.canvas.simulate.resize_inputs`), and the network's output is **bilinearly
upsampled** to the layout's size, so ``SynthesisOutput.image`` is never sharper than the network
makes it. The builder's retriever decides where segments come from: the in-process engine, or the
retrieval service over HTTP (:mod:`synthesis.remote`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from memory_bank import Bank, LayoutError
from retrieval_service.engine import Mode
from synthesis.canvas.builder import Canvas, CanvasBuilder, PlacedSegment
from synthesis.canvas.simulate import input_tensors, resize_inputs
from synthesis.checkpoint import from_pretrained
from synthesis.networks.refinement import CascadedRefinementNetwork

#: Where ``sims worker`` and ``sims synthesize`` look for the synthesis network by default.
DEFAULT_WEIGHTS = Path("weights/synthesis")


class ImageGenerator:
    """The synthesis network as a function of numpy arrays: ``generator(layout, canvas, missing) -> RGB``.

    Inputs at any size (uint8 (H, W) layout, uint8 (H, W, 3) canvas, bool (H, W) missing) are
    resized to the network's resolution; the output is uint8 (h, w, 3) at that resolution. A
    parametric model (``sims.json`` says ``parametric``) is fed an empty canvas, as in training.
    """

    def __init__(self, model: CascadedRefinementNetwork, *, parametric: bool = False) -> None:
        self.model = model.eval()
        self.parametric = parametric

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> ImageGenerator:
        """Load a model directory written by :func:`synthesis.checkpoint.save_pretrained`."""
        loaded = from_pretrained(directory, device=device)
        return cls(loaded.model, parametric=loaded.parametric)

    @property
    def resolution(self) -> tuple[int, int]:
        """(rows, cols) the network runs at."""
        return self.model.config.resolution  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @torch.no_grad()
    def __call__(self, layout: np.ndarray, canvas: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB at the network's resolution."""
        layout, canvas, missing = resize_inputs(layout, canvas, missing, self.resolution)
        if self.parametric:
            canvas, missing = np.zeros_like(canvas), np.ones_like(missing)
        x = input_tensors(layout, canvas, missing)
        device = next(self.model.parameters()).device
        out = self.model(*(x[k][None].to(device) for k in ("layout", "canvas", "missing")))[0]
        return out.permute(1, 2, 0).mul(255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


@dataclass(frozen=True)
class SynthesisOutput:
    """What one synthesis made.

    Attributes:
        image: (H, W, 3) uint8 at the layout's size (the network's output, bilinearly upsampled).
        canvas: the built canvas (:class:`~synthesis.canvas.builder.Canvas`: pixels, missing
            mask, provenance map of bank segment ids, -1 where none).
        layout: the (H, W) uint8 layout synthesized from (the refined one when ``coarse``).
        segments: the painted bank segments, back to front.
        bank_version: the bank version the segments come from.
        timings: seconds per step: ``refine``, ``retrieve``, ``canvas``, ``network``, ``total``.
    """

    image: np.ndarray
    canvas: Canvas
    layout: np.ndarray
    bank_version: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def provenance(self) -> np.ndarray:
        """(H, W) int64 bank segment id behind every canvas pixel, -1 where none."""
        return self.canvas.provenance

    @property
    def segments(self) -> tuple[PlacedSegment, ...]:
        return self.canvas.segments


class SynthesisPipeline:
    """Layout -> photograph: ``pipeline(layout, k=5, seed=0, coarse=False)``.

    Args:
        builder: builds canvases; its retriever is the in-process engine or the HTTP client.
        generator: the synthesis network (:class:`ImageGenerator`).
        refiner: coarse layout -> dense layout (``CoarseLayoutRefiner``); needed for ``coarse=True``.
    """

    def __init__(
        self,
        builder: CanvasBuilder,
        generator: ImageGenerator,
        refiner: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if generator.num_classes != len(builder.classes):
            raise ValueError(
                f"the network expects {generator.num_classes} classes but the bank has {len(builder.classes)}"
            )
        self.builder = builder
        self.generator = generator
        self.refiner = refiner
        self._builders: dict[tuple[int, str], CanvasBuilder] = {}

    @classmethod
    def from_bank(
        cls,
        bank: Bank,
        weights: str | Path = DEFAULT_WEIGHTS,
        *,
        refiner: Callable[[np.ndarray], np.ndarray] | None = None,
        **builder_kwargs: object,
    ) -> SynthesisPipeline:
        """In-process: the bank's own engine and segments, the network from ``weights``."""
        builder = CanvasBuilder.from_bank(bank, **builder_kwargs)  # type: ignore[arg-type]
        return cls(builder, ImageGenerator.from_pretrained(weights), refiner)

    def __call__(
        self,
        layout: np.ndarray,
        *,
        k: int | None = None,
        seed: int = 0,
        coarse: bool = False,
        mode: Mode | None = None,
    ) -> SynthesisOutput:
        """Synthesize a photo for an (H, W) uint8 layout at the bank's resolution (255 = unlabelled).

        ``k``: candidates per component the seed picks among; ``mode``: retrieval mode (both
        default to the builder's options). The same layout, options, seed and bank version give
        the same image.
        """
        start = time.perf_counter()
        timings: dict[str, float] = {}
        # 1. Check the layout.
        layout = self.builder.check_layout(layout)
        # 2. Refine a coarse layout into a dense one.
        if coarse:
            if self.refiner is None:
                raise LayoutError("coarse=True needs a layout refiner, and this pipeline has none")
            t = time.perf_counter()
            # A copy: the refiner hands the array to torch, which wants it writable.
            layout = self.builder.check_layout(self.refiner(layout.copy()))
            timings["refine"] = time.perf_counter() - t
        # 3. Canvas: retrieve, align, order, paste, elide.
        canvas = self._builder(k, mode)(layout, seed=seed)
        timings["retrieve"] = canvas.timings["retrieve"]
        timings["canvas"] = canvas.timings["total"] - canvas.timings["retrieve"]
        # 4. The network, at its resolution.
        t = time.perf_counter()
        small = self.generator(layout, canvas.canvas, canvas.missing)
        # 5. Back to the layout's size.
        h, w = layout.shape
        image = small if small.shape[:2] == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        timings["network"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return SynthesisOutput(image, canvas, layout, canvas.bank_version, timings)

    def _builder(self, k: int | None, mode: Mode | None) -> CanvasBuilder:
        """The builder with these retrieval options (a shallow copy when they differ; cached)."""
        options = self.builder.options
        key = (options.k if k is None else k, options.mode if mode is None else mode)
        if key == (options.k, options.mode):
            return self.builder
        if key[0] < 1 or key[1] not in ("exact", "fast", "full"):
            raise ValueError(f"k must be >= 1 and mode 'exact', 'fast' or 'full', got k={k}, mode={mode!r}")
        got = self._builders.get(key)
        if got is None:
            # A shallow copy shares the retriever, the segment cache and the networks.
            got = copy.copy(self.builder)
            got.options = replace(options, k=key[0], mode=key[1])
            self._builders[key] = got
        return got
