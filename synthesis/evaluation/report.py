"""``sims eval``: score sets of synthesized images against the layouts they came from (paper §6).

For every named image set (SIMS, the parametric baseline, ...) and for the real photos:

1. segmentation consistency: a segmenter trained on real photos segments each image; its
   prediction, at the layout's resolution, is scored against the layout (mIoU over the classes
   present, pixel accuracy). The real photos give the reference score;
2. L1 to the real photo, on the 0..1 scale, at the synthesized image's size;
3. fine detail: the share of power above half the Nyquist radius, over the real photos' share at
   the same size (:func:`~synthesis.evaluation.spectrum.high_frequency_ratio`; 1.0 = as detailed);
4. the mean radially averaged power spectrum, and its distance to the real photos' spectrum at
   the same image size (:mod:`synthesis.evaluation.spectrum`);
5. KID ×10³ between the set and the real photos on the evaluation segmenter's bottleneck
   features, each image at its own resolution (:mod:`synthesis.evaluation.kid`; not Inception);
6. what the canvas leaves visible (:mod:`synthesis.evaluation.seams`): the seam score on
   provenance boundaries inside one class, and the detail in the pixels the canvas lacks, each
   over the real photo's at the same pixels, at the regions of the set's own canvas or, for sets
   without one, of the first SIMS set's canvas for the same layout.

Every measure is taken at the resolution a set comes in: nothing here resizes a set's images
(checkpoint sets run the product pipeline, which returns images at the layout's resolution).
Real photos are resized with area averaging to a set's size before anything is compared with it;
when sets are smaller than the photos, a reference row shows real photos at that size.

Image sets come from folders of PNGs named like the val photos (``0016E5_07959.png``), from a
synthesis checkpoint run in-process through :class:`~synthesis.pipeline.SynthesisPipeline`
(:class:`PipelineImages`), from any function of a layout (:class:`SynthesizedImages`), or from other sets
(:class:`PastedImages`: a canvas's kept pixels over another set's output). Items are scored one
at a time, every set on the same item in turn, so a set keeps only the current item's output
(:class:`SetOutput`: the image and, for canvas-based sets, the canvas) and derived sets and the
gallery (``on_item``) see all outputs of an item together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from tqdm import tqdm

from memory_bank import Bank, ClassTable, DatasetError, SimsError
from memory_bank.images import resize_photo
from synthesis.evaluation.kid import kid_with_error, segmenter_features, stack_features
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix, l1_error
from synthesis.evaluation.seams import CanvasRegions, SeamTally
from synthesis.evaluation.spectrum import (
    HIGH_FREQUENCY_CUTOFF,
    Spectrum,
    high_frequency_fraction,
    high_frequency_ratio,
    plot_spectra,
    power_spectrum,
    spectrum_distance,
)
from synthesis.networks.segmenter import SegmentationNet

if TYPE_CHECKING:
    from synthesis.canvas.builder import Canvas, PlacedSegment
    from synthesis.canvas.elision import ElisionConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
REAL = "real photos"


#: A layout in, a photo out: ``(H, W) uint8 label map → (h, w, 3) uint8 RGB``. The layout comes at
#: the evaluation data's resolution (360x480 for the CamVid banks) with 255 for unlabelled pixels;
#: the image may be smaller (e.g. 96x128), with the same aspect ratio.
LayoutToImage = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvalItem:
    """One evaluation example: the real photo and its layout, named by the photo's file stem."""

    index: int
    name: str
    photo: np.ndarray
    layout: np.ndarray


@dataclass(frozen=True)
class SetOutput:
    """What an image set made for one item: the image and, for canvas-based sets, the canvas it read.

    ``canvas`` is a :class:`~synthesis.canvas.builder.Canvas` (pixels, missing mask, provenance
    map of bank segment ids with -1 where none, elision codes, the placed segments) at the
    layout's resolution; None for sets without one (folders, parametric models).
    """

    image: np.ndarray
    canvas: Canvas | None = None

    @property
    def provenance(self) -> np.ndarray | None:
        """(H, W) int64 bank segment id behind each canvas pixel (-1 where none), or None without a canvas."""
        return None if self.canvas is None else self.canvas.provenance

    @property
    def segments(self) -> tuple[PlacedSegment, ...]:
        """The bank segments painted on the canvas, back to front (empty without a canvas)."""
        return () if self.canvas is None else self.canvas.segments


class ImageSet(Protocol):
    """A named source of one image per evaluation item.

    A set may also offer ``output_for(item) -> SetOutput`` (:class:`RichImageSet`) to hand over
    the canvas behind the image; :func:`output_for` asks for it when present.
    """

    name: str

    def image_for(self, item: EvalItem) -> np.ndarray: ...


@runtime_checkable
class RichImageSet(ImageSet, Protocol):
    """An :class:`ImageSet` that also returns the canvas (provenance, segments) behind each image."""

    def output_for(self, item: EvalItem) -> SetOutput: ...


def output_for(image_set: ImageSet, item: EvalItem) -> SetOutput:
    """``image_set``'s :class:`SetOutput` for ``item``: its own ``output_for`` if it has one, else the image alone."""
    rich = getattr(image_set, "output_for", None)
    return rich(item) if rich is not None else SetOutput(image_set.image_for(item))


@dataclass(frozen=True)
class FolderImages:
    """Already-synthesized images in a folder, one ``<name>.png`` (or .jpg) per item."""

    name: str
    directory: Path

    def image_for(self, item: EvalItem) -> np.ndarray:
        for suffix in IMAGE_SUFFIXES:
            path = Path(self.directory) / f"{item.name}{suffix}"
            if path.is_file():
                return _check_image(np.asarray(Image.open(path).convert("RGB")), f"{self.name}: {path}")
        raise DatasetError(f"{self.name}: no image named {item.name}.png in {self.directory}")


@dataclass(frozen=True)
class SynthesizedImages:
    """Images made on the fly from each item's layout by a :data:`LayoutToImage` function."""

    name: str
    make_image: LayoutToImage

    def image_for(self, item: EvalItem) -> np.ndarray:
        return _check_image(np.asarray(self.make_image(item.layout)), f"{self.name}: image for {item.name}")


@dataclass(frozen=True)
class RealPhotos:
    """The real photos, optionally resized (area averaging) to ``size``: the reference rows."""

    name: str = REAL
    size: tuple[int, int] | None = None

    def image_for(self, item: EvalItem) -> np.ndarray:
        return item.photo if self.size is None else resize_photo(item.photo, self.size)


class PipelineImages:
    """A synthesis checkpoint run in-process through the product's :class:`~synthesis.pipeline.SynthesisPipeline`.

    SIMS models: ``pipeline(layout, k=1, seed=0)``, canvases built from ``memory_bank`` with T
    (``transform/``) and the ordering network (``ordering/``) beside the checkpoint when present;
    ``k=1`` makes every canvas use each component's best match, so the evaluation does not depend
    on a diversity seed. The image comes at the layout's resolution, as the product returns it.

    Parametric models never read a canvas, so none is built (no retrieval, no memory bank
    needed): the network gets an empty canvas, as the pipeline's generator gives it, and its
    output comes at the layout's size as the generator gives it.

    ``elision`` (boundary elision of the canvases) defaults to the product's test-time default
    (:data:`~synthesis.canvas.elision.TEST_ELISION`). The last item's output is kept, so asking
    again for the same item (the paste row, the gallery) does not synthesize twice.
    """

    def __init__(
        self,
        name: str,
        weights: str | Path,
        memory_bank: Bank | None = None,
        *,
        elision: ElisionConfig | None = None,
        seed: int = 0,
    ) -> None:
        from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
        from synthesis.canvas.elision import TEST_ELISION
        from synthesis.model_directory import read_metadata
        from synthesis.pipeline import ImageGenerator, Networks, SynthesisPipeline

        self.name = name
        self.weights = Path(weights)
        self.elision = elision
        self.seed = seed
        # Decide from sims.json before loading anything: only SIMS models need the bank.
        self.parametric = bool(read_metadata(self.weights).get("parametric", False))
        if not self.parametric and memory_bank is None:
            raise SimsError(
                f"{self.weights} is a SIMS model checkpoint: give --memory-bank, the bank its canvases come from"
            )
        self.pipeline: SynthesisPipeline | None = None
        if self.parametric:
            self.generator = ImageGenerator.from_pretrained(self.weights)
        else:
            beside = [self.weights.parent / name for name in ("transform", "ordering")]
            transform, ordering = (p if (p / "config.json").is_file() else None for p in beside)
            networks = Networks.from_pretrained(self.weights, transform=transform, ordering=ordering)
            options = CanvasOptions(k=1, elision=elision or TEST_ELISION)
            self.pipeline = networks.pipeline(CanvasBuilder.from_bank(memory_bank), options)  # type: ignore[arg-type]
            self.generator = networks.generator
        self._last: tuple[tuple[int, str], SetOutput] | None = None

    @property
    def builds_canvases(self) -> bool:
        """True for SIMS models: their outputs carry the canvas (provenance, segments)."""
        return self.pipeline is not None

    def output_for(self, item: EvalItem) -> SetOutput:
        """The image (at the layout's resolution) and, for SIMS models, the canvas, for one item."""
        key = (item.index, item.name)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        out = self._synthesize(item.layout)
        self._last = (key, out)
        return out

    def image_for(self, item: EvalItem) -> np.ndarray:
        return self.output_for(item).image

    def _synthesize(self, layout: np.ndarray) -> SetOutput:
        if self.pipeline is None:
            h, w = layout.shape
            image = self.generator(layout, np.zeros((h, w, 3), np.uint8), np.ones((h, w), bool))
            return SetOutput(_check_image(image, f"{self.name}: image"))
        got = self.pipeline(layout, k=1, seed=self.seed)
        return SetOutput(_check_image(np.asarray(got.image), f"{self.name}: image"), got.canvas)


def paste_canvas(canvas: np.ndarray, provenance: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the canvas's kept pixels (``provenance >= 0``: neither missing nor elided) over ``base``.

    ``base`` is resized to the canvas's size first if it differs (bilinear up, area down).
    """
    canvas = np.asarray(canvas)
    kept = np.asarray(provenance) >= 0
    if canvas.shape[:2] != kept.shape or canvas.ndim != 3:
        raise ValueError(f"canvas {canvas.shape} and provenance {kept.shape} differ in size")
    base = resize_photo(np.asarray(base), kept.shape)  # type: ignore[arg-type]
    return np.where(kept[..., None], canvas, base).astype(np.uint8)


@dataclass(frozen=True)
class PastedImages:
    """Reference row: the canvases' kept pixels pasted over another set's output, with no learning.

    ``canvases`` is the set whose outputs carry canvases (the SIMS checkpoint set); ``base`` any
    set, e.g. the parametric model. The image is at the canvas's (the layout's) resolution.
    """

    name: str
    canvases: ImageSet
    base: ImageSet

    def output_for(self, item: EvalItem) -> SetOutput:
        source = output_for(self.canvases, item)
        if source.canvas is None:
            raise DatasetError(f"{self.name}: {self.canvases.name} gave no canvas for {item.name}")
        base = output_for(self.base, item).image
        return SetOutput(paste_canvas(source.canvas.canvas, source.canvas.provenance, base))

    def image_for(self, item: EvalItem) -> np.ndarray:
        return self.output_for(item).image


def paste_name(base: str) -> str:
    """The name of the paste row over set ``base``."""
    return f"paste (canvas over {base})"


def open_image_set(
    name: str, path: str | Path, memory_bank: Bank | None = None, *, elision: ElisionConfig | None = None
) -> ImageSet:
    """A folder of images becomes :class:`FolderImages`; a checkpoint directory :class:`PipelineImages`."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{name}: {p} is not a directory")
    if any(next(p.glob(f"*{s}"), None) is not None for s in IMAGE_SUFFIXES):
        return FolderImages(name, p)
    if (p / "config.json").is_file():
        return PipelineImages(name, p, memory_bank, elision=elision)
    raise DatasetError(f"{name}: {p} holds neither images nor a model checkpoint")


def canvas_set(image_sets: Iterable[ImageSet]) -> ImageSet | None:
    """The first set whose outputs carry canvases (the SIMS checkpoint set), or None."""
    return next((s for s in image_sets if getattr(s, "builds_canvases", False)), None)


def items_from_bank(bank: Bank, limit: int | None = None, progress: bool = False) -> list[EvalItem]:
    """Evaluation items from a bank (e.g. CamVid val), named by their source files' stems."""
    n = bank.num_images if limit is None else min(limit, bank.num_images)
    names = [Path(f).stem for f in bank.images.column("source_file").to_pylist()[:n]]
    return [
        EvalItem(i, names[i], np.asarray(bank.photos[i]), np.asarray(bank.labels[i]))
        for i in tqdm(range(n), desc="reading images", unit="img", leave=False, disable=not progress)
    ]


def describe_bank(bank: Bank) -> str:
    """A title such as ``camvid val`` from a bank's image table."""
    parts = []
    for column in ("dataset", "split"):
        values = sorted(set(bank.images.column(column).to_pylist()))
        parts.append("+".join(values))
    return " ".join(parts)


def items_from_samples(samples: Iterable[Any], limit: int | None = None) -> list[EvalItem]:
    """Evaluation items from dataset samples with ``image``, ``label`` and ``source_file`` (an indexers reader)."""
    items = []
    for i, s in enumerate(samples):
        if limit is not None and i >= limit:
            break
        items.append(EvalItem(i, Path(s.source_file).stem, np.asarray(s.image), np.asarray(s.label)))
    if not items:
        raise DatasetError("no evaluation images")
    return items


@dataclass
class SetResult:
    """Scores of one image set. ``reference`` rows are real photos (no L1; the spectrum noise floor instead).

    ``hf_fraction`` is the mean share of power above 0.25 cycles/pixel; ``fine_detail_ratio`` that
    over the real photos' at the same size. ``kid``/``kid_se`` are KID and its standard error
    (raw, not ×10³) against the real photos at their own size; None for the real photos themselves.
    """

    name: str
    reference: bool
    size: tuple[int, int]
    scores: SegmentationScores
    spectrum: Spectrum
    spectrum_distance: float
    l1: float | None
    hf_fraction: float = float("nan")
    fine_detail_ratio: float = float("nan")
    kid: float | None = None
    kid_se: float | None = None
    seam_score: float = float("nan")
    hole_detail: float = float("nan")
    hole_share: float = float("nan")
    samples: list[np.ndarray] = field(default_factory=list, repr=False)
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": self.reference,
            "size": list(self.size),
            **self.scores.to_dict(list(class_names)),
            "spectrum_distance": self.spectrum_distance,
            "spectrum_slope": self.spectrum.slope(),
            "l1": self.l1,
            "hf_fraction": _finite(self.hf_fraction),
            "fine_detail_ratio": _finite(self.fine_detail_ratio),
            "kid_x1000": None if self.kid is None else _finite(1e3 * self.kid),
            "kid_se_x1000": None if self.kid_se is None else _finite(1e3 * self.kid_se),
            "seam_score": _finite(self.seam_score),
            "hole_detail": _finite(self.hole_detail),
            "hole_share": _finite(self.hole_share),
        }


@dataclass
class EvalReport:
    """Everything ``sims eval`` measured, ready to be written as markdown, JSON and PNGs."""

    classes: ClassTable
    num_images: int
    layout_size: tuple[int, int]
    segmenter: str
    segmenter_resolution: tuple[int, int]
    results: list[SetResult]
    real_spectra: dict[tuple[int, int], Spectrum]
    sample_items: list[EvalItem] = field(default_factory=list, repr=False)
    command: str = ""
    title: str = "Evaluation"
    gallery: str | None = None  # relative path of the HTML gallery, when one was written

    def result(self, name: str) -> SetResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "num_images": self.num_images,
            "layout_size": list(self.layout_size),
            "segmenter": self.segmenter,
            "segmenter_resolution": list(self.segmenter_resolution),
            "kid_features": "evaluation segmenter bottleneck, global-average-pooled (not Inception)",
            "hf_cutoff_cycles_per_pixel": HIGH_FREQUENCY_CUTOFF,
            "command": self.command,
            "gallery": self.gallery,
            "results": [r.to_dict(self.classes.names) for r in self.results],
        }


#: Called once per item with every set's output for it (the gallery writer, for one).
ItemCallback = Callable[[EvalItem, Mapping[str, SetOutput]], None]


def evaluate_image_sets(
    items: Sequence[EvalItem],
    image_sets: Sequence[ImageSet],
    segmenter: SegmentationNet,
    classes: ClassTable,
    *,
    segmenter_name: str = "",
    num_samples: int = 4,
    progress: bool = True,
    on_item: ItemCallback | None = None,
) -> EvalReport:
    """Score real photos and every image set on ``items`` (see the module notes).

    Items are taken one at a time; for each, every set's :class:`SetOutput` is made once, scored,
    and handed to ``on_item`` (with the set names as keys) before the next item.
    """
    # 1. Check inputs
    if not items:
        raise DatasetError("no evaluation images")
    names = [s.name for s in image_sets]
    if len(set(names)) != len(names) or any(n.startswith(REAL) for n in names):
        raise ValueError(f"image set names must be unique and not start with {REAL!r}, got {names}")
    if segmenter.config.num_classes != len(classes):
        raise ValueError(f"the segmenter predicts {segmenter.config.num_classes} classes, the data has {len(classes)}")
    layout_size = tuple(items[0].layout.shape[:2])
    photo_size = tuple(items[0].photo.shape[:2])

    # 2. Every set on each item in turn; the reference rows (real photos as given, and at each
    # smaller size a set comes in) are made once the first item shows the sets' sizes.
    scorers = [_Scorer(s.name, segmenter, num_samples) for s in image_sets]
    references: list[tuple[RealPhotos, _Scorer]] = []
    tallies = {name: SeamTally() for name in [*names, REAL]}
    for position, item in enumerate(tqdm(items, desc="scoring", unit="layout", disable=not progress, leave=False)):
        outputs = {s.name: output_for(s, item) for s in image_sets}
        _tally_seams(tallies, item, outputs)
        for scorer in scorers:
            scorer.add(position, item, outputs[scorer.name].image, reference=False)
        if not references:
            sizes = sorted({sc.size for sc in scorers if sc.size != photo_size}, reverse=True)  # type: ignore[type-var]
            photos = [RealPhotos()] + [RealPhotos(f"{REAL} at {h}x{w}", (h, w)) for h, w in sizes]  # type: ignore[misc]
            references = [(ref, _Scorer(ref.name, segmenter, num_samples)) for ref in photos]
        for ref, scorer in references:
            scorer.add(position, item, ref.image_for(item), reference=True)
        if on_item is not None:
            on_item(item, outputs)

    # 3. Results: spectra, fine detail and KID each against the real photos (at the set's size for
    # spectra and fine detail; at their own size for KID, as each image's features are)
    ref_results = [scorer.result(reference=True) for _, scorer in references]
    by_size = {r.size: (r, scorer) for r, (_, scorer) in zip(ref_results, references, strict=True)}
    real_scorer = references[0][1]
    real_features = stack_features(real_scorer.features)
    for r, (_, scorer) in zip(ref_results, references, strict=True):
        r.spectrum_distance = spectrum_distance(*scorer.half_spectra())  # the noise floor
        r.fine_detail_ratio = high_frequency_ratio(scorer.hf, scorer.hf)
        if scorer is not real_scorer:
            r.kid, r.kid_se = _kid(scorer.features, real_features)
    results = []
    for scorer in scorers:
        r = scorer.result(reference=False)
        ref, ref_scorer = by_size[r.size]
        r.spectrum_distance = spectrum_distance(r.spectrum, ref.spectrum)
        r.fine_detail_ratio = high_frequency_ratio(scorer.hf, ref_scorer.hf)
        r.kid, r.kid_se = _kid(scorer.features, real_features)
        results.append(r)
    for r in [ref_results[0], *results]:
        tally = tallies[r.name]
        r.seam_score, r.hole_detail, r.hole_share = tally.seam_score, tally.hole_detail, tally.hole_share

    return EvalReport(
        classes=classes,
        num_images=len(items),
        layout_size=layout_size,  # type: ignore[arg-type]
        segmenter=segmenter_name,
        segmenter_resolution=segmenter.config.resolution,
        results=ref_results + results,
        real_spectra={r.size: r.spectrum for r in ref_results},
        sample_items=list(items[:num_samples]),
    )


def _regions(output: SetOutput, layout: np.ndarray) -> CanvasRegions | None:
    canvas = output.canvas
    if canvas is None:
        return None
    return CanvasRegions.from_canvas(layout, canvas.provenance, {p.segment_id: p.image_id for p in canvas.segments})


def _tally_seams(tallies: Mapping[str, SeamTally], item: EvalItem, outputs: Mapping[str, SetOutput]) -> None:
    """Add one item to every set's seam and hole sums (at its own canvas, else the first set's with one)."""
    own = {name: _regions(out, item.layout) for name, out in outputs.items()}
    shared = next((r for r in own.values() if r is not None), None)
    if shared is None:
        return
    for name, out in [*outputs.items(), (REAL, SetOutput(item.photo))]:
        regions = own.get(name) or shared
        if out.image.shape[:2] == regions.holes.shape and item.photo.shape[:2] == regions.holes.shape:
            tallies[name].add(out.image, item.photo, regions)


def _kid(features: Sequence[np.ndarray], real: np.ndarray) -> tuple[float | None, float | None]:
    if len(features) < 2 or len(real) < 2:
        return None, None  # KID needs two images a side
    estimate, se = kid_with_error(stack_features(features), real)
    return estimate, (None if np.isnan(se) else se)


class _Scorer:
    """Running sums of one set's scores, fed one image at a time (no image set is held in memory)."""

    def __init__(self, name: str, segmenter: SegmentationNet, num_samples: int) -> None:
        self.name = name
        self.segmenter = segmenter
        self.num_samples = num_samples
        n = segmenter.config.num_classes
        self.conf = np.zeros((n, n), np.int64)
        self.size: tuple[int, int] | None = None
        self.freqs: np.ndarray | None = None
        self.power: list[np.ndarray | None] = [None, None]  # summed spectra of even- and odd-numbered items
        self.counts = [0, 0]
        self.l1: list[float] = []
        self.hf: list[float] = []
        self.features: list[np.ndarray] = []
        self.samples: list[np.ndarray] = []
        self.predictions: list[np.ndarray] = []

    def add(self, position: int, item: EvalItem, image: np.ndarray, *, reference: bool) -> None:
        if self.size is None:
            self.size = image.shape[:2]  # type: ignore[assignment]
        elif image.shape[:2] != self.size:
            raise DatasetError(f"{self.name}: {item.name} is {image.shape[:2]}, earlier images were {self.size}")
        pred = self.segmenter.predict_labels(image, out_size=item.layout.shape[:2])[0]
        self.conf += confusion_matrix(pred, item.layout, self.segmenter.config.num_classes)
        if not reference:
            self.l1.append(l1_error(image, resize_photo(item.photo, self.size)))  # type: ignore[arg-type]
        spectrum = power_spectrum(image)
        half = position % 2
        summed = self.power[half]
        self.power[half] = spectrum.power if summed is None else summed + spectrum.power
        self.counts[half] += 1
        self.freqs = spectrum.freqs
        self.hf.append(high_frequency_fraction(image))
        self.features.append(segmenter_features(self.segmenter, image))
        if len(self.samples) < self.num_samples:
            self.samples.append(image)
            self.predictions.append(pred)

    def half_spectra(self) -> tuple[Spectrum, Spectrum]:
        """Mean spectra of the even- and of the odd-numbered items (the same one twice for a single item)."""
        assert self.freqs is not None
        even, odd = self.power
        assert even is not None
        a = Spectrum(self.freqs, even / self.counts[0], self.counts[0])
        return a, (a if odd is None else Spectrum(self.freqs, odd / self.counts[1], self.counts[1]))

    def result(self, *, reference: bool) -> SetResult:
        if self.size is None or self.freqs is None:
            raise DatasetError(f"{self.name}: no images")
        total = sum(p for p in self.power if p is not None)
        n = sum(self.counts)
        return SetResult(
            name=self.name,
            reference=reference,
            size=self.size,
            scores=SegmentationScores.from_confusion(self.conf),
            spectrum=Spectrum(freqs=self.freqs, power=total / n, count=n),  # type: ignore[arg-type]
            spectrum_distance=float("nan"),
            l1=float(np.mean(self.l1)) if self.l1 else None,
            hf_fraction=float(np.nanmean(self.hf)) if np.isfinite(self.hf).any() else float("nan"),
            samples=self.samples,
            predictions=self.predictions,
        )


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# Writing the report


def write_report(report: EvalReport, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out_dir``; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=_json) + "\n")
    plot_spectra(_spectra_to_plot(report), out / "spectra.png", title="Mean power spectrum (luminance)")
    plot_class_iou(report, out / "class_iou.png")
    plot_samples(report, out / "samples.png")
    md = out / "report.md"
    md.write_text(render_markdown(report))
    return md


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _spectra_to_plot(report: EvalReport) -> dict[str, Spectrum]:
    return {
        r.name if "x" in r.name.split()[-1] else f"{r.name} ({r.size[0]}x{r.size[1]})": r.spectrum
        for r in report.results
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _fmt_kid(kid: float | None, se: float | None) -> str:
    if kid is None or not np.isfinite(kid):
        return "—"
    return f"{1e3 * kid:.2f}" + ("" if se is None or not np.isfinite(se) else f" ± {1e3 * se:.2f}")


def render_markdown(report: EvalReport) -> str:
    """The report as markdown: the headline table, per-class IoU, definitions and the plots."""
    h, w = report.layout_size
    sh, sw = report.segmenter_resolution
    real = [r for r in report.results if r.reference and np.isfinite(r.hf_fraction)]
    real_share = "".join(
        f" Real photos at {r.size[0]}x{r.size[1]} hold {100 * r.hf_fraction:.2f}% of their power there." for r in real
    )
    lines = [
        f"# {report.title}",
        "",
        f"{report.num_images} layouts at {h}x{w}. Segmenter: `{report.segmenter}` (trained on real CamVid train "
        f"photos at {sh}x{sw}).",
        "",
        "| images | size | seg. mIoU ↑ | pixel acc. ↑ | L1 to photo ↓ | fine detail (1 = real) | "
        "spectrum distance ↓ | spectrum slope | KID ×10³ ↓ | seam score (1 = real) | hole detail (1 = real) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        name = f"{r.name} (reference)" if r.reference else f"**{r.name}**"
        dist = f"({_fmt(r.spectrum_distance)})" if r.reference else _fmt(r.spectrum_distance)
        kid = _fmt_kid(r.kid, r.kid_se)
        lines.append(
            f"| {name} | {r.size[0]}x{r.size[1]} | {_fmt(r.scores.miou)} | {_fmt(r.scores.pixel_accuracy)} | "
            f"{_fmt(r.l1)} | {_fmt(r.fine_detail_ratio)} | {dist} | {r.spectrum.slope():.2f} | "
            f"{f'({kid})' if r.reference and r.kid is not None else kid} | {_fmt(r.seam_score)} | "
            f"{_fmt(r.hole_detail)} |"
        )
    lines += [
        "",
        "Per-class IoU:",
        "",
        "| images | " + " | ".join(report.classes.names) + " |",
        "|---|" + "---:|" * len(report.classes),
    ]
    for r in report.results:
        lines.append(f"| {r.name} | " + " | ".join(_fmt(v, 2) for v in r.scores.class_iou) + " |")
    lines += [
        "",
        "How to read it:",
        "",
        "- *Segmentation consistency*: the segmenter's prediction on each image, resized to the layout, against "
        "the layout; mIoU over the classes present in the layouts, accumulated over all images; unlabelled "
        "pixels (255) are not counted. The real photos give the reference: a synthesis cannot be expected to "
        "score higher than real photos of the same size.",
        "- *Spectrum distance*: mean absolute difference of log10 power between the set's mean radially averaged "
        "power spectrum (luminance, Hann window) and the real photos' at the same size; 0.1 means a factor "
        "10^0.1 ≈ 1.26 on average. For reference rows, in parentheses: the distance between the even- and "
        "odd-numbered real photos, the noise floor of this measure. *Slope*: fitted log-log slope over 0.02-0.4 "
        "cycles/pixel (natural images: about -2).",
        "- *L1*: mean absolute difference to the real photo (area-resized to the set's size), 0..1 scale.",
        f"- *Fine detail*: per image, the share of its power (luminance, mean removed, Hann window, DC excluded) "
        f"at radial frequencies above {HIGH_FREQUENCY_CUTOFF} cycles/pixel (half the Nyquist radius); a set's mean "
        f"share over the real photos' at the same size, so 1.0 is as detailed as real photos, below 1 smoother, "
        f"above 1 noisier.{real_share}",
        "- *Seam score*: the squared colour step between 4-neighbouring pixels of one layout class that come "
        "from different sources (two bank photos, or a bank photo and the network's drawing), summed over the "
        "set, over the real photos' steps at the same pixel pairs: 1.0 = no visible seam, above 1 a step the "
        "photo does not have. *Hole detail*: the high-pass energy (luminance minus its 2x area-downsampled, "
        "upsampled copy: the top octave, where fine detail lives) on the pixels the canvas lacks, over the real "
        "photos' there: 1.0 = as detailed, near 0 an upsampled low-resolution drawing. Both are taken at the "
        "set's own canvas or, for rows without one (parametric models, folders, real photos), at the first SIMS "
        "set's canvas for the same layout"
        + (
            f" (the canvases lack {100 * report.results[0].hole_share:.1f}% of the pixels)."
            if np.isfinite(report.results[0].hole_share)
            else "; — when no set builds canvases."
        ),
        "- Every measure is taken at the size the set comes in (column *size*; checkpoint sets come at the "
        "layout's resolution, as the product pipeline returns them); real photos are area-resized to that size.",
        "- *KID ×10³*: kernel inception distance, the unbiased MMD² with the kernel (x·y/d + 1)³, between the "
        "set's and the real photos' features, ± its jackknife standard error. The features are the project's "
        "evaluation segmenter's (its deepest encoder block, global-average-pooled, each image at its own "
        "resolution), **not Inception's**: these numbers compare the rows of this report and are not comparable "
        "with the FID/KID of papers. Unbiased, so about 0 (possibly slightly negative) for a set indistinguishable "
        "from real photos. Reference rows at a smaller size, in parentheses: the resized real photos against the "
        "full-size ones (what the size alone costs); — for the real photos themselves.",
        "",
        "![mean power spectra](spectra.png)",
        "",
        "![per-class IoU](class_iou.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    if report.gallery:
        lines += [
            f"Per-layout gallery (layout, canvas, outputs, provenance, photo): [{report.gallery}]({report.gallery})",
            "",
        ]
    if report.command:
        lines += ["Reproduce:", "", "```bash", report.command, "```", ""]
    return "\n".join(lines)


def plot_class_iou(report: EvalReport, path: str | Path) -> Path:
    """Grouped bars of per-class IoU, one colour per image set."""
    from matplotlib.figure import Figure

    names = report.classes.names
    fig = Figure(figsize=(max(6.0, 0.8 * len(names)), 4), dpi=120)
    ax = fig.subplots()
    width = 0.8 / len(report.results)
    x = np.arange(len(names))
    for k, r in enumerate(report.results):
        ax.bar(x + (k - (len(report.results) - 1) / 2) * width, np.nan_to_num(r.scores.class_iou), width, label=r.name)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("Segmentation consistency per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_samples(report: EvalReport, path: str | Path) -> Path:
    """A grid: layout, real photo, then each set's image and the segmenter's reading of it, per sample."""
    from matplotlib.figure import Figure

    items = report.sample_items
    sets = [r for r in report.results if not r.reference]
    if not items:
        raise ValueError("the report holds no samples")
    lut = report.classes.palette()
    columns = ["layout", "real photo"] + [c for r in sets for c in (r.name, f"{r.name}: segmented")]
    fig = Figure(figsize=(2.2 * len(columns), 1.8 * len(items)), dpi=100)
    axes = np.asarray(fig.subplots(len(items), len(columns), squeeze=False))
    for i, item in enumerate(items):
        cells = [lut[item.layout], item.photo]
        for r in sets:
            cells += [r.samples[i], lut[r.predictions[i]]]
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(_thumbnail(cell), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
        axes[i, 0].set_ylabel(item.name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _thumbnail(image: np.ndarray, rows: int = 180) -> np.ndarray:
    # A figure cell is about 200 px wide: larger images only slow the plot down.
    if image.shape[0] <= rows:
        return image
    cols = round(image.shape[1] * rows / image.shape[0])
    return resize_photo(image, (rows, cols))


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DatasetError(f"{what}: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image


__all__ = [
    "EvalItem",
    "EvalReport",
    "FolderImages",
    "ImageSet",
    "ItemCallback",
    "LayoutToImage",
    "PastedImages",
    "PipelineImages",
    "RealPhotos",
    "RichImageSet",
    "SetOutput",
    "SetResult",
    "SynthesizedImages",
    "canvas_set",
    "describe_bank",
    "evaluate_image_sets",
    "items_from_bank",
    "items_from_samples",
    "open_image_set",
    "output_for",
    "paste_canvas",
    "paste_name",
    "render_markdown",
    "write_report",
]
