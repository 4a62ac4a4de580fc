"""``sims eval``: score sets of synthesized images against the layouts they came from (paper §6).

For every named image set (SIMS, the parametric baseline, ...) and for the real photos:

1. segmentation consistency: a segmenter trained on real photos segments each image; its
   prediction, at the layout's resolution, is scored against the layout (mIoU over the classes
   present, pixel accuracy). The real photos give the reference score;
2. the mean radially averaged power spectrum, and its distance to the real photos' spectrum at
   the same image size (:mod:`synthesis.evaluation.spectrum`);
3. L1 to the real photo, on the 0..1 scale, at the synthesized image's size.

Image sets come from folders of PNGs named like the val photos (``0016E5_07959.png``) or from
any :class:`Synthesizer` called in-process. Real photos are resized with area averaging to a
set's size before anything is compared with it, so a 96x128 synthesis is measured against real
photos at 96x128; when sets are smaller than the photos, a second reference row shows the
segmenter's score on real photos at that size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from memory_bank import Bank, ClassTable, DatasetError, SimsError
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix, l1_error
from synthesis.evaluation.spectrum import (
    Spectrum,
    mean_power_spectrum,
    plot_spectra,
    power_spectrum,
    spectrum_distance,
)
from synthesis.networks.segmenter import SegmentationNet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@runtime_checkable
class Synthesizer(Protocol):
    """Anything that turns a layout into a photo: ``(H, W) uint8 label map → (h, w, 3) uint8 RGB``.

    The layout comes at the evaluation data's resolution (360x480 for the CamVid banks) with 255
    for unlabelled pixels; the image may be smaller (e.g. 96x128), with the same aspect ratio.
    """

    def __call__(self, layout: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalItem:
    """One evaluation example: the real photo and its layout, named by the photo's file stem."""

    index: int
    name: str
    photo: np.ndarray
    layout: np.ndarray


class ImageSet(Protocol):
    """A named source of one image per evaluation item."""

    name: str

    def image_for(self, item: EvalItem) -> np.ndarray: ...


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
    """Images made on the fly by a :class:`Synthesizer` from each item's layout."""

    name: str
    synthesizer: Synthesizer

    def image_for(self, item: EvalItem) -> np.ndarray:
        return _check_image(np.asarray(self.synthesizer(item.layout)), f"{self.name}: image for {item.name}")


@dataclass(frozen=True)
class RealPhotos:
    """The real photos, optionally resized (area averaging) to ``size``: the reference rows."""

    name: str = "real photos"
    size: tuple[int, int] | None = None

    def image_for(self, item: EvalItem) -> np.ndarray:
        return item.photo if self.size is None else resize_image(item.photo, self.size)


@dataclass
class PipelineSynthesizer:
    """A synthesis network checkpoint run in-process: canvas from ``memory_bank``, then the network.

    The image comes back at the network's resolution (no upsampling), so it is scored against real
    photos at that size. ``k=1`` makes every canvas use each component's best match, so the
    evaluation does not depend on a diversity seed.
    """

    weights: Path
    memory_bank: Bank
    k: int = 1

    def __post_init__(self) -> None:
        from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
        from synthesis.networks.ordering import LearnedOrderer
        from synthesis.networks.transform import TransformAligner
        from synthesis.pipeline import ImageGenerator

        self.generator = ImageGenerator.from_pretrained(self.weights)
        # A parametric model never looks at the canvas: skip building one.
        self.builder = None
        if not self.generator.parametric:
            weights_root = Path(self.weights).parent
            aligner = orderer = None
            if (weights_root / "transform" / "config.json").is_file():
                aligner = TransformAligner.from_pretrained(weights_root / "transform")
            if (weights_root / "ordering" / "config.json").is_file():
                orderer = LearnedOrderer.from_pretrained(weights_root / "ordering")
            self.builder = CanvasBuilder.from_bank(
                self.memory_bank, aligner=aligner, orderer=orderer, options=CanvasOptions(k=self.k)
            )

    def __call__(self, layout: np.ndarray) -> np.ndarray:
        if self.builder is None:
            return self.generator(layout, np.zeros((*layout.shape, 3), np.uint8), np.ones(layout.shape, bool))
        canvas = self.builder(layout, seed=0)
        return self.generator(layout, canvas.canvas, canvas.missing)


def load_synthesizer(path: Path, memory_bank: Bank | None) -> Synthesizer:
    """A :class:`Synthesizer` from a synthesis network checkpoint directory.

    SIMS models need ``memory_bank`` (the bank canvases are built from, e.g. CamVid train);
    T and the ordering network are taken from ``transform/`` and ``ordering/`` beside the
    checkpoint when present.
    """
    if memory_bank is None:
        raise SimsError(f"{path} is a model checkpoint: give --memory-bank, the bank its canvases come from")
    return PipelineSynthesizer(Path(path), memory_bank)


def open_image_set(name: str, path: str | Path, memory_bank: Bank | None = None) -> ImageSet:
    """A folder of images becomes :class:`FolderImages`; a checkpoint directory goes to :func:`load_synthesizer`."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{name}: {p} is not a directory")
    if any(next(p.glob(f"*{s}"), None) is not None for s in IMAGE_SUFFIXES):
        return FolderImages(name, p)
    if (p / "config.json").is_file():
        return SynthesizedImages(name, load_synthesizer(p, memory_bank))
    raise DatasetError(f"{name}: {p} holds neither images nor a model checkpoint")


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


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``(rows, cols)``: area averaging down, bilinear up."""
    rows, cols = size
    if image.shape[:2] == (rows, cols):
        return image
    shrink = image.shape[0] >= rows and image.shape[1] >= cols
    return cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass
class SetResult:
    """Scores of one image set. ``reference`` rows are real photos (no L1; the spectrum noise floor instead)."""

    name: str
    reference: bool
    size: tuple[int, int]
    scores: SegmentationScores
    spectrum: Spectrum
    spectrum_distance: float
    l1: float | None
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
            "command": self.command,
            "results": [r.to_dict(self.classes.names) for r in self.results],
        }


def evaluate_image_sets(
    items: Sequence[EvalItem],
    image_sets: Sequence[ImageSet],
    segmenter: SegmentationNet,
    classes: ClassTable,
    *,
    segmenter_name: str = "",
    num_samples: int = 4,
    progress: bool = True,
) -> EvalReport:
    """Score real photos and every image set on ``items`` (see the module notes)."""
    # 1. Check inputs
    if not items:
        raise DatasetError("no evaluation images")
    names = [s.name for s in image_sets]
    if len(set(names)) != len(names) or "real photos" in names:
        raise ValueError(f"image set names must be unique and not 'real photos', got {names}")
    if segmenter.config.num_classes != len(classes):
        raise ValueError(f"the segmenter predicts {segmenter.config.num_classes} classes, the data has {len(classes)}")
    layout_size = tuple(items[0].layout.shape[:2])
    photo_size = tuple(items[0].photo.shape[:2])

    # 2. Synthesized sets, with the sizes they come in
    results = [_score_set(items, s, segmenter, num_samples, progress) for s in image_sets]

    # 3. References: the real photos as given, and at each smaller size a set comes in
    sizes = sorted({r.size for r in results if r.size != photo_size}, reverse=True)
    references = [RealPhotos()] + [RealPhotos(f"real photos at {h}x{w}", (h, w)) for h, w in sizes]
    ref_results = [_score_set(items, s, segmenter, num_samples, progress, reference=True) for s in references]
    real_spectra = {r.size: r.spectrum for r in ref_results}

    # 4. Spectrum distances, each at the set's own size; references get the even/odd split noise floor
    for r in results:
        r.spectrum_distance = spectrum_distance(r.spectrum, real_spectra[r.size])
    for r, ref in zip(ref_results, references, strict=True):
        even = mean_power_spectrum(ref.image_for(it) for it in items[0::2])
        odd = mean_power_spectrum(ref.image_for(it) for it in items[1::2]) if len(items) > 1 else even
        r.spectrum_distance = spectrum_distance(even, odd)

    return EvalReport(
        classes=classes,
        num_images=len(items),
        layout_size=layout_size,  # type: ignore[arg-type]
        segmenter=segmenter_name,
        segmenter_resolution=segmenter.config.resolution,
        results=ref_results + results,
        real_spectra=real_spectra,  # type: ignore[arg-type]
        sample_items=list(items[:num_samples]),
    )


def _score_set(
    items: Sequence[EvalItem],
    image_set: ImageSet,
    segmenter: SegmentationNet,
    num_samples: int,
    progress: bool,
    reference: bool = False,
) -> SetResult:
    n = segmenter.config.num_classes
    conf = np.zeros((n, n), np.int64)
    power: np.ndarray | None = None
    l1: list[float] = []
    samples, predictions = [], []
    size: tuple[int, int] | None = None
    for item in tqdm(items, desc=f"scoring {image_set.name}", unit="img", disable=not progress, leave=False):
        image = image_set.image_for(item)
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise DatasetError(f"{image_set.name}: {item.name} is {image.shape[:2]}, earlier images were {size}")
        pred = segmenter.predict_labels(image, out_size=item.layout.shape[:2])[0]
        conf += confusion_matrix(pred, item.layout, n)
        if not reference:
            l1.append(l1_error(image, resize_image(item.photo, size)))
        # Spectra are summed as they come, so no image set is held in memory.
        spectrum = power_spectrum(image)
        power = spectrum.power if power is None else power + spectrum.power
        if len(samples) < num_samples:
            samples.append(image)
            predictions.append(pred)
    if size is None or power is None:
        raise DatasetError(f"{image_set.name}: no images")
    return SetResult(
        name=image_set.name,
        reference=reference,
        size=size,  # type: ignore[arg-type]
        scores=SegmentationScores.from_confusion(conf),
        spectrum=Spectrum(freqs=spectrum.freqs, power=power / len(items), count=len(items)),
        spectrum_distance=float("nan"),
        l1=float(np.mean(l1)) if l1 else None,
        samples=samples,
        predictions=predictions,
    )


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


def render_markdown(report: EvalReport) -> str:
    """The report as markdown: the headline table, per-class IoU, definitions and the plots."""
    h, w = report.layout_size
    sh, sw = report.segmenter_resolution
    lines = [
        f"# {report.title}",
        "",
        f"{report.num_images} layouts at {h}x{w}. Segmenter: `{report.segmenter}` (trained on real CamVid train "
        f"photos at {sh}x{sw}).",
        "",
        "| images | size | seg. mIoU ↑ | pixel acc. ↑ | spectrum distance ↓ | spectrum slope | L1 to photo ↓ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        name = f"{r.name} (reference)" if r.reference else f"**{r.name}**"
        dist = f"({_fmt(r.spectrum_distance)})" if r.reference else _fmt(r.spectrum_distance)
        lines.append(
            f"| {name} | {r.size[0]}x{r.size[1]} | {_fmt(r.scores.miou)} | {_fmt(r.scores.pixel_accuracy)} | "
            f"{dist} | {r.spectrum.slope():.2f} | {_fmt(r.l1)} |"
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
        "",
        "![mean power spectra](spectra.png)",
        "",
        "![per-class IoU](class_iou.png)",
        "",
        "![samples](samples.png)",
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
    return cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DatasetError(f"{what}: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image


__all__ = [
    "EvalItem",
    "EvalReport",
    "FolderImages",
    "ImageSet",
    "RealPhotos",
    "SetResult",
    "SynthesizedImages",
    "Synthesizer",
    "describe_bank",
    "evaluate_image_sets",
    "items_from_bank",
    "items_from_samples",
    "load_synthesizer",
    "open_image_set",
    "render_markdown",
    "resize_image",
    "write_report",
]
