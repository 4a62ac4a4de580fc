"""The image sets ``sims eval`` compares, and the evaluation items they are made for.

An :class:`EvalItem` is one real photo with its layout; an image set (:class:`ImageSet`) gives
one image per item, and a :class:`RichImageSet` also the canvas behind it (:class:`SetOutput`).
The sets: a folder of PNGs named like the val photos (:class:`FolderImages`), a synthesis
checkpoint run in-process through the product pipeline (:class:`PipelineImages`), any function
of a layout (:class:`SynthesizedImages`), the real photos at some size (:class:`RealPhotos`,
the reference rows) and the paste row (:class:`PastedImages`: a canvas's kept pixels over
another set's output). Items come from a bank or from a dataset reader (:func:`items_from_bank`,
:func:`items_from_samples`). Scoring is :mod:`synthesis.evaluation.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from tqdm import tqdm

from memory_bank import Bank, DatasetError, SimsError
from memory_bank.images import resize_photo

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
    ``before_seam_blend`` is the image before the pipeline's seam blend
    (:func:`~synthesis.canvas.seams.blend_seams`), None where none ran.
    """

    image: np.ndarray
    canvas: Canvas | None = None
    before_seam_blend: np.ndarray | None = None

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


class OutputImages:
    """Base of the sets that make a whole :class:`SetOutput` per item; the image is its ``image``."""

    def output_for(self, item: EvalItem) -> SetOutput:
        raise NotImplementedError

    def image_for(self, item: EvalItem) -> np.ndarray:
        """The image of :meth:`output_for`."""
        return self.output_for(item).image


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
        """The image named after ``item`` in the folder (``<name>.png``, ``.jpg`` or ``.jpeg``)."""
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
        """``make_image`` of the item's layout, checked to be an (h, w, 3) uint8 image."""
        return _check_image(np.asarray(self.make_image(item.layout)), f"{self.name}: image for {item.name}")


@dataclass(frozen=True)
class RealPhotos:
    """The real photos, optionally resized (area averaging) to ``size``: the reference rows."""

    name: str = REAL
    size: tuple[int, int] | None = None

    def image_for(self, item: EvalItem) -> np.ndarray:
        """The item's photo, resized to ``size`` when one is given."""
        return item.photo if self.size is None else resize_photo(item.photo, self.size)


class PipelineImages(OutputImages):
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

    def _synthesize(self, layout: np.ndarray) -> SetOutput:
        if self.pipeline is None:
            h, w = layout.shape
            image = self.generator(layout, np.zeros((h, w, 3), np.uint8), np.ones((h, w), bool))
            return SetOutput(_check_image(image, f"{self.name}: image"))
        got = self.pipeline(layout, k=1, seed=self.seed)
        return SetOutput(_check_image(np.asarray(got.image), f"{self.name}: image"), got.canvas, got.before_seam_blend)


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
class PastedImages(OutputImages):
    """Reference row: the canvases' kept pixels pasted over another set's output, with no learning.

    ``canvases`` is the set whose outputs carry canvases (the SIMS checkpoint set); ``base`` any
    set, e.g. the parametric model. The image is at the canvas's (the layout's) resolution.
    """

    name: str
    canvases: ImageSet
    base: ImageSet

    def output_for(self, item: EvalItem) -> SetOutput:
        """The canvas of ``canvases`` for ``item`` pasted over ``base``'s image (no canvas of its own)."""
        canvas = _output_with(self.canvases, item, "canvas", self.name).canvas
        base = output_for(self.base, item).image
        return SetOutput(paste_canvas(canvas.canvas, canvas.provenance, base))  # type: ignore[union-attr]


@dataclass(frozen=True)
class UnblendedImages(OutputImages):
    """Ablation row: a SIMS set's images as they were before the seam blend, on the same canvases."""

    name: str
    base: ImageSet

    def output_for(self, item: EvalItem) -> SetOutput:
        """``base``'s image before its seam blend for ``item``, with ``base``'s canvas."""
        got = _output_with(self.base, item, "before_seam_blend", self.name)
        return SetOutput(got.before_seam_blend, got.canvas)  # type: ignore[arg-type]


def _output_with(image_set: ImageSet, item: EvalItem, part: str, row: str) -> SetOutput:
    """``image_set``'s output for ``item``, which the derived ``row`` needs to have ``part`` (a field)."""
    got = output_for(image_set, item)
    if getattr(got, part) is None:
        raise DatasetError(f"{row}: {image_set.name} gave no {part.replace('_', ' ')} for {item.name}")
    return got


def unblended_name(base: str) -> str:
    """The name of the no-seam-blend row of set ``base``."""
    return f"{base} without seam blend"


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


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DatasetError(f"{what}: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image


__all__ = [
    "IMAGE_SUFFIXES",
    "REAL",
    "EvalItem",
    "FolderImages",
    "ImageSet",
    "LayoutToImage",
    "PastedImages",
    "PipelineImages",
    "RealPhotos",
    "RichImageSet",
    "SetOutput",
    "SynthesizedImages",
    "canvas_set",
    "describe_bank",
    "items_from_bank",
    "items_from_samples",
    "open_image_set",
    "output_for",
    "paste_canvas",
    "paste_name",
]
