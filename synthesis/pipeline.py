"""The SIMS pipeline: a layout in, a photograph out (paper §4-§5).

``SynthesisPipeline(builder, generator, refiner=None)(layout, k=5, seed=0, coarse=False)`` runs

1. check the layout; 2. refine it if it is coarse; 3. build the canvas (retrieve, align, order,
paste, elide: :class:`~synthesis.canvas.builder.CanvasBuilder`); 4. synthesize the photo at the
layout's resolution; 5. blend its seams (:func:`~synthesis.canvas.seams.blend_seams`, with the
generator's ``seam_blend``; skipped for parametric models and when it is None).

A :class:`Deadline` passed as ``stop`` is checked between these steps (a cooperative cancel):
once it is past or cancelled, the pipeline raises :class:`SynthesisStoppedError` before the next step
instead of running it, so a timed-out request's work really ends within one step.

The network works at its own resolution (``config.json``'s ``resolution``, e.g. 192x256): the
layout, canvas and missing mask are resized to it exactly as the training data was
(:func:`~synthesis.canvas.simulate.resize_inputs`). Its output comes back at the layout's size
through the canvas blend (:mod:`synthesis.networks.blend`): a network with the blend head keeps the
real canvas pixels at their own resolution, colour-corrected, and draws the rest; an older network
without it is upsampled bilinearly. The builder's retriever decides where segments come from: the
in-process engine, or the retrieval service over HTTP (:mod:`synthesis.remote`).

:class:`Networks` holds the networks a pipeline runs (loaded once) and is the one place a pipeline
is assembled: ``networks.pipeline(builder)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from memory_bank import Bank, LayoutError
from memory_bank.errors import TimedOutError
from retrieval_service.types import MODES, Mode
from synthesis.canvas.builder import Canvas, CanvasBuilder, CanvasOptions, PlacedSegment
from synthesis.canvas.elision import TEST_ELISION, ElisionConfig
from synthesis.canvas.protocols import Aligner, Orderer
from synthesis.canvas.seams import SeamBlend, blend_seams
from synthesis.canvas.simulate import resize_inputs
from synthesis.model_directory import ModelNotFoundError, from_pretrained, read_metadata
from synthesis.networks.blend import FEATHER, feather_radius_for, render_full_resolution
from synthesis.tensors import image_array, image_tensor, input_tensors, mask_tensor, one_hot

#: Whether the blend also feathers seams between pasted segments (chosen by measurement, docs/synthesis.md).
SEAM_FEATHER = False
#: The gradient-domain blend across seams after the network (chosen by measurement, docs/synthesis.md).
SEAM_BLEND = SeamBlend()
#: Where ``sims worker`` and ``sims synthesize`` look for the synthesis network by default.
DEFAULT_WEIGHTS = Path("weights/synthesis")


class SynthesisStoppedError(TimedOutError):
    """A synthesis stopped between two steps because its :class:`Deadline` passed or was cancelled (504)."""


class Deadline:
    """A cooperative cancel for one synthesis: its time (``time.monotonic()``) and a cancel flag.

    The pipeline calls :meth:`check` between its steps; the thread that runs the synthesis stops
    there. Python cannot interrupt a thread, so this is how a timed-out request's work ends.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next check (e.g. the caller gave up or went away)."""
        self._cancelled.set()

    @property
    def stopped(self) -> bool:
        return self._cancelled.is_set() or time.monotonic() >= self.at

    def check(self, step: str) -> None:
        """Raise :class:`SynthesisStoppedError` if the synthesis should not go on to ``step``."""
        if self.stopped:
            why = "was cancelled" if self._cancelled.is_set() else f"took longer than {self.seconds:g} s"
            raise SynthesisStoppedError(f"synthesis {why} (stopped before {step})", kind="synthesis_timeout")


@dataclass(frozen=True)
class GeneratedImage:
    """The network's answer at the layout's resolution.

    Attributes:
        image: (H, W, 3) uint8 photograph.
        canvas_weight: (H, W) float32 in [0, 1], the canvas's share of every output pixel (all
            zeros for a network without the blend head, and for the parametric baseline).
    """

    image: np.ndarray
    canvas_weight: np.ndarray


class SynthesisNetwork(Protocol):
    """What :class:`ImageGenerator` needs of a network: the SIMS network and the SPADE peer both have it."""

    config: Any

    def forward_with_blend(
        self, layout: torch.Tensor, canvas: torch.Tensor, missing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def eval(self) -> Any: ...

    def parameters(self) -> Any: ...


class ImageGenerator:
    """The synthesis network as a function of numpy arrays: ``generator(layout, canvas, missing, kept) -> RGB``.

    Inputs come at the layout's resolution (uint8 (H, W) layout, uint8 (H, W, 3) canvas, bool
    (H, W) missing and kept masks); they are resized to the network's resolution, and the output
    comes back at (H, W) through :func:`~synthesis.networks.blend.blend_canvas`. A parametric
    model (``sims.json`` says ``parametric``) is fed an empty canvas, as in training.
    """

    def __init__(
        self,
        model: SynthesisNetwork,
        *,
        parametric: bool = False,
        seam_feather: bool = SEAM_FEATHER,
        seam_blend: SeamBlend | None = SEAM_BLEND,
    ) -> None:
        self.model = model.eval()
        self.parametric = parametric
        self.seam_feather = seam_feather
        #: The seam blend the pipeline runs on this generator's output (None: none).
        self.seam_blend = seam_blend
        #: None: :func:`~synthesis.networks.blend.feather_radius_for` the canvas's elision.
        self.feather_radius: int | None = None

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> ImageGenerator:
        """Load a model directory (:mod:`synthesis.model_directory`); ``sims.json`` says whether it is parametric.

        Any registered synthesis network loads (the class comes from ``config.json``): the SIMS
        network or the SPADE-class peer.
        """
        model = from_pretrained(directory, device=device)
        if not callable(getattr(model, "forward_with_blend", None)):
            raise ModelNotFoundError(f"{directory} holds a {type(model).__name__}, not a synthesis network")
        return cls(model, parametric=bool(read_metadata(directory).get("parametric", False)))  # type: ignore[arg-type]

    @property
    def resolution(self) -> tuple[int, int]:
        """(rows, cols) the network runs at."""
        return self.model.config.resolution  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @torch.no_grad()
    def generate(
        self,
        layout: np.ndarray,
        canvas: np.ndarray,
        missing: np.ndarray,
        kept: np.ndarray | None = None,
        pieces: np.ndarray | None = None,
        elision: ElisionConfig | None = None,
    ) -> GeneratedImage:
        """The photograph at the layout's resolution.

        ``kept`` (default: not ``missing``) marks real canvas pixels; ``pieces`` (the canvas's
        provenance map) lets the blend feather seams between segments when ``seam_feather`` is on;
        ``elision`` (the canvas's) sets the feather radius unless ``feather_radius`` is set.
        """
        if self.parametric:
            canvas, missing = np.zeros_like(canvas), np.ones_like(missing)
        kept = ~np.asarray(missing, bool) if kept is None or self.parametric else np.asarray(kept, bool)
        small = input_tensors(*resize_inputs(layout, canvas, missing, self.resolution))
        device = next(self.model.parameters()).device
        rgb, raw = self.model.forward_with_blend(*(small[k][None].to(device) for k in ("layout", "canvas", "missing")))
        full_canvas = image_tensor(canvas)[None].to(device)
        full_kept = mask_tensor(kept)[None].to(device)
        full_pieces = None
        if self.seam_feather and pieces is not None:
            full_pieces = torch.from_numpy(np.asarray(pieces, np.int64))[None, None].to(device)
        radius = self.feather_radius
        if radius is None:
            radius = FEATHER if elision is None else feather_radius_for(elision.band, elision.white_fraction)
        layout_hot = None
        if getattr(self.model, "hole_refiner", None) is not None:
            layout_hot = one_hot(torch.from_numpy(np.asarray(layout, np.int64))[None], self.num_classes).to(device)
        blended = render_full_resolution(self.model, rgb, raw, full_canvas, full_kept, layout_hot, full_pieces, radius)
        return GeneratedImage(image_array(blended.image[0]), blended.weight[0, 0].cpu().numpy())

    def __call__(
        self, layout: np.ndarray, canvas: np.ndarray, missing: np.ndarray, kept: np.ndarray | None = None
    ) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the layout's resolution."""
        return self.generate(layout, canvas, missing, kept).image


@dataclass(frozen=True)
class SynthesisOutput:
    """What one synthesis made.

    Attributes:
        image: (H, W, 3) uint8 at the layout's size.
        canvas: the built canvas (:class:`~synthesis.canvas.builder.Canvas`: pixels, missing
            mask, provenance map of bank segment ids, -1 where none).
        layout: the (H, W) uint8 layout synthesized from (the refined one when ``coarse``).
        segments: the painted bank segments, back to front.
        bank_version: the bank version the segments come from.
        timings: seconds per step: ``refine``, ``retrieve``, ``canvas``, ``network``, ``seam_blend``, ``total``.
        canvas_weight: (H, W) float32, the canvas's share of every output pixel (see
            :class:`GeneratedImage`), or None.
        elision: the boundary elision the canvas was made with.
        before_seam_blend: the network's image before the seam blend, or None where none ran.
    """

    image: np.ndarray
    canvas: Canvas
    layout: np.ndarray
    bank_version: str
    timings: dict[str, float] = field(default_factory=dict)
    canvas_weight: np.ndarray | None = None
    elision: ElisionConfig | None = None
    before_seam_blend: np.ndarray | None = None

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
        self._builders: dict[tuple[int, str, ElisionConfig], CanvasBuilder] = {}

    @classmethod
    def from_bank(
        cls,
        bank: Bank,
        weights: str | Path = DEFAULT_WEIGHTS,
        *,
        refiner: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> SynthesisPipeline:
        """In-process: the bank's own engine and segments, the network from ``weights`` (no T, the layout rule).

        Canvases use the test-time elision (:data:`~synthesis.canvas.elision.TEST_ELISION`), as the worker's do.
        """
        networks = Networks(ImageGenerator.from_pretrained(weights), refiner)
        return networks.pipeline(CanvasBuilder.from_bank(bank))

    def __call__(
        self,
        layout: np.ndarray,
        *,
        k: int | None = None,
        seed: int = 0,
        coarse: bool = False,
        mode: Mode | None = None,
        elision: ElisionConfig | None = None,
        pins: Mapping[int, int] | None = None,
        candidates: int = 0,
        stop: Deadline | None = None,
        instances: np.ndarray | None = None,
        exclude_images: Sequence[int] = (),
        checked: bool = False,
    ) -> SynthesisOutput:
        """Synthesize a photo for an (H, W) uint8 layout at the bank's resolution (255 = unlabelled).

        ``instances``: the layout's (H, W) instance map (0 = none), which cuts thing classes per
        instance on a bank built with instances and is ignored on others.

        ``k``: candidates per component the seed picks among; ``mode``: retrieval mode;
        ``elision``: boundary elision of the canvas (all three default to the builder's options);
        ``pins``: component index -> the bank segment that fills it; ``candidates``: matches per
        component kept in ``output.canvas.retrieval`` (see :class:`~synthesis.canvas.builder.CanvasBuilder`);
        ``exclude_images``: bank images none of whose segments may fill the canvas.
        The same layout, options, seed, pins and bank version give the same image. ``stop`` is
        checked before each step (:class:`Deadline`). ``checked``: the layout was already
        validated for this bank (:func:`memory_bank.png.decode_layout` ends in that check), so
        nothing on the way checks it again.
        """
        start = time.perf_counter()
        timings: dict[str, float] = {}
        check = stop.check if stop is not None else lambda step: None
        # 1. Check the layout (once: nothing after this step checks it again).
        if not checked:
            layout = self.builder.check_layout(layout)
        # 2. Refine a coarse layout into a dense one.
        if coarse:
            check("refine")
            if self.refiner is None:
                raise LayoutError("coarse=True needs a layout refiner, and this pipeline has none")
            t = time.perf_counter()
            # A copy: the refiner hands the array to torch, which wants it writable.
            layout = self.builder.check_layout(self.refiner(layout.copy()))
            timings["refine"] = time.perf_counter() - t
        # 3. Canvas: retrieve, align, order, paste, elide.
        builder = self._builder(k, mode, elision)
        check("retrieve")
        canvas = builder(
            layout,
            seed=seed,
            exclude_images=exclude_images,
            pins=pins,
            candidates=candidates,
            instances=instances,
            checked=True,
        )
        timings["retrieve"] = canvas.timings["retrieve"]
        timings["canvas"] = canvas.timings["total"] - canvas.timings["retrieve"]
        # 4. The network, at its resolution; the output at the layout's.
        check("network")
        t = time.perf_counter()
        generated = self.generator.generate(
            layout,
            canvas.canvas,
            canvas.missing,
            canvas.kept,
            canvas.provenance,
            builder.options.elision,
        )
        timings["network"] = time.perf_counter() - t
        # 5. The seam blend, at the layout's resolution.
        image, before = generated.image, None
        if self.generator.seam_blend is not None and not self.generator.parametric:
            check("seam_blend")
            t = time.perf_counter()
            image, before = blend_seams(image, layout, canvas.sources, self.generator.seam_blend), image
            timings["seam_blend"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return SynthesisOutput(
            image,
            canvas,
            layout,
            canvas.bank_version,
            timings,
            canvas_weight=generated.canvas_weight,
            elision=builder.options.elision,
            before_seam_blend=before,
        )

    def _builder(self, k: int | None, mode: Mode | None, elision: ElisionConfig | None = None) -> CanvasBuilder:
        """The builder with these options (a shallow copy when they differ; cached)."""
        options = self.builder.options
        key = (
            options.k if k is None else k,
            options.mode if mode is None else mode,
            options.elision if elision is None else elision,
        )
        if key == (options.k, options.mode, options.elision):
            return self.builder
        if key[0] < 1 or key[1] not in MODES:
            raise ValueError(f"k must be >= 1 and mode one of {', '.join(MODES)}, got k={k}, mode={mode!r}")
        got = self._builders.get(key)
        if got is None:
            got = self.builder.with_parts(options=replace(options, k=key[0], mode=key[1], elision=key[2]))
            self._builders[key] = got
        return got


@dataclass(frozen=True)
class Networks:
    """The networks of a pipeline: the synthesis network, and the optional refiner, aligner and orderer.

    :meth:`pipeline` is the one place where networks, a canvas builder and a
    :class:`SynthesisPipeline` are put together: the synthesis worker, the in-process backend of
    the service, ``sims synthesize`` and ``sims eval`` all go through it, so the same networks
    give the same pipeline wherever the segments come from.

    Attributes:
        generator: the synthesis network.
        refiner: coarse layout -> dense layout, for ``coarse=True`` (None: coarse layouts are refused).
        aligner: places segments (the transformation network T); None: the builder's (identity by default).
        orderer: painting order (the ordering network); None: the builder's (the layout rule by default).
        elision: the boundary elision canvases get unless a request says otherwise.
    """

    generator: ImageGenerator
    refiner: Callable[[np.ndarray], np.ndarray] | None = None
    aligner: Aligner | None = None
    orderer: Orderer | None = None
    elision: ElisionConfig = TEST_ELISION

    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path,
        *,
        refiner: str | Path | None = None,
        transform: str | Path | None = None,
        ordering: str | Path | None = None,
        device: str | torch.device = "cpu",
        elision: ElisionConfig = TEST_ELISION,
    ) -> Networks:
        """The synthesis network in ``weights``, and each other network whose directory is given (None: off)."""
        generator = ImageGenerator.from_pretrained(weights, device=device)
        refine = align = order = None
        if refiner is not None:
            from synthesis.networks.layout_refiner import CoarseLayoutRefiner

            refine = CoarseLayoutRefiner.from_pretrained(refiner, device=device)
        if transform is not None:
            from synthesis.networks.transform import TransformAligner

            align = TransformAligner.from_pretrained(transform)
        if ordering is not None:
            from synthesis.networks.ordering import LearnedOrderer

            order = LearnedOrderer.from_pretrained(ordering)
        return cls(generator, refine, align, order, elision)

    def pipeline(self, builder: CanvasBuilder, options: CanvasOptions | None = None) -> SynthesisPipeline:
        """The pipeline over ``builder``'s retrieval and segments, with these networks.

        A copy of the builder gets this aligner and orderer (where set) and ``options``
        (default: the default options with this elision); ``builder`` itself is left as it is.
        """
        options = options or CanvasOptions(elision=self.elision)
        builder = builder.with_parts(aligner=self.aligner, orderer=self.orderer, options=options)
        return SynthesisPipeline(builder, self.generator, self.refiner)
