"""The canvas pipeline (paper §4.3, §4.4, §5.2): layout → retrieval → alignment → order → paste → elision.

``CanvasBuilder(retriever, segments, ...)(layout, seed=...)`` returns a :class:`Canvas`: the
canvas the synthesis network reads, its missing-pixel mask, and a provenance map naming the bank
segment (and so the source photo) behind every pixel. The retriever is swappable (in-process
engine or HTTP client), as are the aligner and the orderer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from memory_bank import Bank, ClassTable, LayoutError, SegmentConfig, Segments, extract_segments
from memory_bank.segments import check_label_map
from retrieval_service.query import prepare_query
from retrieval_service.types import (
    DEFAULT_CANDIDATES,
    ComponentResult,
    Mode,
    RetrievalOptions,
    RetrievalResult,
    Retriever,
)
from synthesis.canvas.compose import NO_SEGMENT, composite
from synthesis.canvas.elision import ElisionConfig, elide, kept_pixels
from synthesis.canvas.order_rule import DepthTiers, LayoutOrderer, Tier
from synthesis.canvas.protocols import Aligner, IdentityAligner, Orderer, SegmentSource
from synthesis.canvas.seams import source_map
from synthesis.canvas.segment_cache import CachedSegments

#: Stream of the seed's random generator used for elision (retrieval uses the seed itself).
ELISION_STREAM = 1


@dataclass(frozen=True)
class PlacedSegment:
    """A bank segment painted on the canvas for one query component."""

    component_id: int
    class_id: int
    segment_id: int
    image_id: int
    score: float
    rank: int  # position in the painting order, 0 = farthest (painted first)


@dataclass(frozen=True)
class Canvas:
    """A built canvas.

    Attributes:
        canvas: (H, W, 3) uint8; black where missing, white at elided boundary pixels.
        missing: (H, W) bool; True where the canvas holds no pixel (no segment, or blacked out).
        provenance: (H, W) int64; the bank segment id whose pixel the canvas shows, -1 where it
            shows none (missing or elided). Where it is >= 0 the canvas pixel is that
            segment's pixel as placed by the aligner.
        elision: (H, W) uint8; 0 kept, 1 white, 2 black (see :mod:`synthesis.canvas.elision`).
        segments: the painted segments, back to front.
        unfilled: ``(component_id, status)`` of the components that got no segment.
        timings: seconds per step.
        bank_version: the bank version the retrieval answered from (segment ids refer to it).
        components: the layout's components (every one, in the retrieval's order: the index pins use).
        retrieval: the retrieval result, each component's matches and choice (pins applied).
        pinned: the components a pin chose the segment of.
    """

    canvas: np.ndarray
    missing: np.ndarray
    provenance: np.ndarray
    elision: np.ndarray
    segments: tuple[PlacedSegment, ...]
    unfilled: tuple[tuple[int, str], ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    bank_version: str = ""
    components: Segments | None = None
    retrieval: RetrievalResult | None = None
    pinned: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for a in (self.canvas, self.missing, self.provenance, self.elision):
            a.setflags(write=False)

    @property
    def kept(self) -> np.ndarray:
        """(H, W) bool: real canvas pixels, neither missing nor elided."""
        return kept_pixels(self.missing, self.elision)

    @property
    def sources(self) -> np.ndarray:
        """(H, W) int64: the bank photo behind each kept pixel, -1 where the network draws (``seams.source_map``)."""
        return source_map(self.provenance, {p.segment_id: p.image_id for p in self.segments})


@dataclass(frozen=True)
class CanvasOptions:
    """The settings a builder makes every canvas with (each canvas brings its own seed and excluded images).

    ``k``, ``mode``, ``min_area`` and ``candidates`` are the :class:`~retrieval_service.types.RetrievalOptions`
    of its retrievals (same defaults and limits; the seed picks among the top-k); ``elision`` goes
    to :func:`~synthesis.canvas.elision.elide`.
    """

    k: int = 5
    mode: Mode = "fast"
    min_area: int = 0
    candidates: int = DEFAULT_CANDIDATES
    elision: ElisionConfig = field(default_factory=ElisionConfig)

    def __post_init__(self) -> None:
        self.retrieval(None, ())  # bad values fail here, not at the first canvas

    def retrieval(
        self, seed: int | None, exclude_images: Sequence[int], pins: Mapping[int, int] | None = None, listed: int = 0
    ) -> RetrievalOptions:
        """The retrieval options of one canvas.

        ``pins`` (component -> segment id) fix some choices; ``listed`` asks for that many matches
        per component while the seed still picks among the first ``k`` (so listing more candidates
        never changes the canvas).
        """
        k = max(self.k, listed)
        return RetrievalOptions(
            k=k,
            mode=self.mode,
            seed=seed,
            exclude_images=tuple(int(i) for i in exclude_images),
            min_area=self.min_area,
            candidates=self.candidates,
            choose_from=self.k if k > self.k else None,
            pins={str(int(c)): int(s) for c, s in (pins or {}).items()},
        )


class CanvasBuilder:
    """Builds canvases from layouts: ``builder(layout, seed=0)``.

    Args:
        retriever: retrieves matches per component (:class:`~synthesis.canvas.protocols.Retriever`).
        segments: reads the chosen segments (:class:`~synthesis.canvas.protocols.SegmentSource`).
        classes, config, resolution: the bank's class table, segment settings and frame; query
            components are cut with the same function the bank was built with.
        aligner: places segments in the frame; identity by default.
        orderer: back-to-front order; the layout rule by default.
        object_classes: classes whose surroundings are blacked out by elision; by default the
            object tier of :class:`~synthesis.canvas.order_rule.DepthTiers` for these class names.
        options: retrieval and elision settings.
    """

    def __init__(
        self,
        retriever: Retriever,
        segments: SegmentSource,
        *,
        classes: ClassTable,
        config: SegmentConfig,
        resolution: tuple[int, int],
        aligner: Aligner | None = None,
        orderer: Orderer | None = None,
        object_classes: Collection[int] | None = None,
        options: CanvasOptions | None = None,
    ) -> None:
        self.retriever = retriever
        self.segments = segments
        self.classes = classes
        self.config = config
        self.resolution = (int(resolution[0]), int(resolution[1]))
        tiers = DepthTiers.from_class_names(classes.names)
        self.aligner: Aligner = aligner or IdentityAligner()
        self.orderer: Orderer = orderer or LayoutOrderer(tiers)
        if object_classes is None:
            object_classes = [c.id for c in classes if tiers.tier(c.id) == Tier.OBJECT]
        self.object_classes = frozenset(int(c) for c in object_classes)
        self.options = options or CanvasOptions()

    @classmethod
    def from_bank(
        cls,
        bank: Bank,
        *,
        retriever: Retriever | None = None,
        max_images: int = 64,
        **kwargs: object,
    ) -> CanvasBuilder:
        """A builder over one bank: the in-process engine (unless ``retriever`` is given), cached segment reads."""
        if retriever is None:
            # Imported here: a builder that retrieves over HTTP (the worker) never loads the engine and FAISS.
            from retrieval_service.engine import RetrievalEngine

            retriever = RetrievalEngine.from_bank(bank)
        return cls(
            retriever,
            CachedSegments(bank, max_images=max_images),
            classes=bank.classes,
            config=bank.config,
            resolution=bank.resolution,
            **kwargs,  # type: ignore[arg-type]
        )

    def with_parts(
        self, *, aligner: Aligner | None = None, orderer: Orderer | None = None, options: CanvasOptions | None = None
    ) -> CanvasBuilder:
        """A copy with another aligner, orderer or options (None keeps this one's); it shares the
        retriever and the segment cache."""
        got = copy.copy(self)
        got.aligner = self.aligner if aligner is None else aligner
        got.orderer = self.orderer if orderer is None else orderer
        got.options = self.options if options is None else options
        return got

    def query(
        self,
        layout: np.ndarray,
        seed: int | None,
        exclude_images: Sequence[int],
        pins: Mapping[int, int] | None = None,
        listed: int = 0,
        instances: np.ndarray | None = None,
        *,
        checked: bool = False,
    ) -> tuple[Segments, RetrievalResult]:
        """The layout's components (as the engine cuts them) and the retrieval result (the retriever applies pins).

        ``instances`` is the layout's instance map, if any (used when the bank cuts per instance);
        ``checked``: the layout already passed :meth:`check_layout`."""
        options = self.options.retrieval(seed, exclude_images, pins, listed)
        retrieve_query = getattr(self.retriever, "retrieve_query", None)
        if retrieve_query is not None:
            # In-process engine: cut and code the layout once and share the components.
            query = prepare_query(layout, len(self.classes), self.config, self.resolution, instances, checked=checked)
            result = retrieve_query(query, options)
            segments = query.segments
        else:
            # Only retrievers that take instance maps are handed one.
            extra = () if instances is None else (instances,)
            result = self.retriever.retrieve(layout, options, *extra)
            segments = extract_segments(layout, len(self.classes), replace(self.config, min_area=1), instances)
        if len(result.components) != len(segments) or any(
            c.class_id != segments.class_id[c.component_id] for c in result.components
        ):
            raise LayoutError(
                f"the retriever's {len(result.components)} components do not match the layout's {len(segments)}; "
                "is it serving a bank with other segment settings?"
            )
        return segments, result

    def __call__(
        self,
        layout: np.ndarray,
        *,
        seed: int = 0,
        exclude_images: Sequence[int] = (),
        pins: Mapping[int, int] | None = None,
        candidates: int = 0,
        instances: np.ndarray | None = None,
        checked: bool = False,
    ) -> Canvas:
        """Build the canvas of an (H, W) label map at the bank's resolution (255 = unlabelled).

        ``instances``, the layout's (H, W) instance map, cuts thing classes per instance on a bank
        built with instances (ignored otherwise).

        The same layout, seed, exclusions and pins give the same canvas. ``pins`` maps component
        indices to the bank segments that must fill them (the rest follow the seed); ``candidates``
        keeps that many matches per component in ``Canvas.retrieval`` without changing the canvas.
        Components whose class the bank lacks, that are too small, or that get no match leave
        missing pixels. ``checked``: the layout already passed :meth:`check_layout` (the pipeline's
        first step), so it is not checked again.
        """
        timings: dict[str, float] = {}
        t = time.perf_counter()
        start = t

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[name] = now - t
            t = now

        # 1. Check the layout (once per synthesis: the pipeline's check, or this one).
        if not checked:
            layout = self.check_layout(layout)
        # 2. Components and retrieval (seeded pick among the top-k).
        components, result = self.query(layout, seed, exclude_images, pins, candidates, instances, checked=True)
        lap("retrieve")
        # 3. Read the chosen segments and place them in the frame.
        chosen: list[tuple[ComponentResult, int, int, float]] = []
        read: list[tuple[np.ndarray, np.ndarray]] = []
        targets = []
        unfilled = []
        for comp in result.components:
            match = comp.chosen
            if match is None:
                unfilled.append((comp.component_id, str(comp.status)))
                continue
            image_id, full, mask = self.read_segment(match.segment_id)
            read.append((full, mask))
            targets.append(component_mask(components, comp.component_id))
            chosen.append((comp, match.segment_id, image_id, match.score))
        placed_segments = self.align(layout, targets, read)
        pixels = [px for px, _ in placed_segments]
        masks = [np.asarray(mk, bool) for _, mk in placed_segments]
        lap("read_align")
        # 4. Order back to front.
        class_ids = [c[0].class_id for c in chosen]
        order = list(self.orderer(layout, masks, class_ids)) if chosen else []
        lap("order")
        # 5. Paste.
        painted = composite(self.resolution, pixels, masks, [c[1] for c in chosen], order)
        lap("compose")
        # 6. Elide boundaries (seeded; its own stream so it does not depend on retrieval's draws).
        rng = np.random.default_rng([seed, ELISION_STREAM])
        elided = elide(
            painted.canvas,
            painted.missing,
            painted.pieces,
            layout,
            self.object_classes,
            rng,
            self.options.elision,
        )
        provenance = np.where(elided.code == 0, painted.provenance, NO_SEGMENT)
        lap("elide")
        timings["total"] = time.perf_counter() - start
        placed = tuple(
            PlacedSegment(comp.component_id, comp.class_id, sid, iid, score, rank)
            for rank, (comp, sid, iid, score) in enumerate(chosen[i] for i in order)
        )
        return Canvas(
            canvas=elided.canvas,
            missing=elided.missing,
            provenance=provenance,
            elision=elided.code,
            segments=placed,
            unfilled=tuple(unfilled),
            timings=timings,
            bank_version=result.bank_version,
            components=components,
            retrieval=result,
            pinned=frozenset(int(c) for c in (pins or {})),
        )

    def align(
        self, layout: np.ndarray, targets: Sequence[np.ndarray], segments: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Place ``(pixels, mask)`` segments on their target masks: in one call if the aligner has ``align_many``."""
        align_many = getattr(self.aligner, "align_many", None)
        if align_many is not None and segments:  # BatchAligner: all segments of the layout together
            placed = list(align_many(layout, targets, [p for p, _ in segments], [m for _, m in segments]))
            if len(placed) != len(segments):
                raise ValueError(f"align_many returned {len(placed)} segments for {len(segments)}")
            return placed
        return [self.aligner(layout, t, p, m) for t, (p, m) in zip(targets, segments, strict=True)]

    def read_segment(self, segment_id: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(image id, (H, W, 3) pixels zero outside the mask, (H, W) mask) of a bank segment."""
        fast = getattr(self.segments, "segment_pixels", None)
        if fast is not None:  # CachedSegments: no label map decoded, no crop round trip
            got = fast(segment_id)
            return got.image_id, got.pixels, got.mask
        seg = self.segments.segment(segment_id)
        full = np.zeros((*self.resolution, 3), np.uint8)
        y0, x0, y1, x1 = seg.bbox
        full[y0:y1, x0:x1] = seg.crop
        return seg.image_id, full, seg.mask

    def check_layout(self, layout: np.ndarray) -> np.ndarray:
        """The layout as C-contiguous uint8, or a :class:`LayoutError` if it does not fit the bank."""
        return check_label_map(layout, len(self.classes), self.resolution)


def component_mask(components: Segments, i: int) -> np.ndarray:
    """(H, W) bool mask of query component ``i``, compared inside its box only."""
    mask = np.zeros(components.size, bool)
    y0, x0, y1, x1 = (int(v) for v in components.bbox[i])
    mask[y0:y1, x0:x1] = components.component_map[y0:y1, x0:x1] == i + 1
    return mask
