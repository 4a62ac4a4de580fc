"""Scoring image sets against their layouts and the real photos: :func:`evaluate_image_sets`.

Every set is scored one item at a time (running sums: no image set is held in memory) into a
:class:`SetResult` per set and per reference row, gathered in an :class:`EvalReport`; the
measures are listed in :mod:`synthesis.evaluation`. Writing the report
is :mod:`synthesis.evaluation.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from memory_bank import ClassTable, DatasetError
from memory_bank.images import resize_photo
from synthesis.evaluation.image_sets import REAL, EvalItem, ImageSet, RealPhotos, SetOutput, output_for
from synthesis.evaluation.kid import kid_with_error, segmenter_features, stack_features
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix, l1_error
from synthesis.evaluation.seams import CanvasRegions, SeamTally
from synthesis.evaluation.spectrum import (
    HIGH_FREQUENCY_CUTOFF,
    Spectrum,
    high_frequency_fraction,
    high_frequency_ratio,
    power_spectrum,
    spectrum_distance,
)
from synthesis.networks.segmenter import SegmentationNet


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
        """The row as ``report.json`` holds it (KID ×10³; None where a measure is undefined)."""
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
        """The row of the set (or reference) named ``name``."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as ``report.json`` holds it."""
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
    """Score real photos and every image set on ``items`` (the measures: :mod:`synthesis.evaluation`).

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
        """Score one image of the set (``position``: the item's place, for the even/odd spectra)."""
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
        """The set's scores so far; the distances to the real photos are filled in by the caller."""
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


__all__ = ["EvalReport", "ItemCallback", "SetResult", "evaluate_image_sets"]
