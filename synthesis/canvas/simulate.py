"""Simulated training canvases (paper §5.2), their on-disk cache, and the dataset that reads it.

The synthesis network trains on (layout, canvas, missing) → photo. Its canvases must look like
test-time canvases, yet be made from the training photo itself so the photo is the target.
For one training image and its layout, :func:`simulate_canvas`:

1. **stencils** every component with the mask of a segment retrieved for it from a *different*
   image (the same retrieval as at test time, with the image excluded): the canvas shows the
   training photo where the component and the retrieved mask overlap, so its holes and
   overhangs have the shapes real retrievals have;
2. **transfers colour** to ``color_transfer`` (20%) of the components, each from a random bank
   segment of the same class in another image: per-channel mean and standard deviation are
   matched in CIE Lab (Reinhard et al. 2001), as OpenCV computes it on float RGB in [0, 1];
3. **jitters** a share of the kept segments (gamma, white balance, a small shift), when asked, so
   that the canvas has the seams a canvas of segments from different photos has
   (:mod:`synthesis.canvas.seam_jitter`);
4. **elides boundaries** exactly as the test-time builder does (:mod:`synthesis.canvas.elision`).

:func:`write_canvas_cache` precomputes ``variants`` such canvases per bank image at a training
size into a directory (one ``.npz`` per image and variant, each written atomically, plus
``cache.json``); :class:`SimulatedCanvasDataset` serves them to the training loop.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from memory_bank import Bank
from memory_bank.atomic import atomic_file, write_json_atomic
from memory_bank.images import resize_label, resize_photo
from synthesis.canvas.builder import ELISION_STREAM, Canvas, CanvasBuilder, CanvasOptions, PlacedSegment, component_mask
from synthesis.canvas.compose import NO_SEGMENT, composite
from synthesis.canvas.elision import elide, kept_pixels
from synthesis.canvas.seam_jitter import SeamJitter
from synthesis.canvas.segment_cache import CachedSegments
from synthesis.tensors import image_tensor, input_tensors, label_tensor, mask_tensor

logger = logging.getLogger(__name__)

#: Random streams of a seed (retrieval uses the seed itself, elision ``ELISION_STREAM``).
COLOR_STREAM = 2
JITTER_STREAM = 3
#: Version of the cache layout written by :func:`write_canvas_cache`.
CACHE_FORMAT = 1
CACHE_MANIFEST = "cache.json"


# 1. Colour statistics
def lab(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) → float32 CIE Lab (L in 0..100)."""
    flat = np.ascontiguousarray(pixels, np.uint8).reshape(-1, 1, 3)
    return cv2.cvtColor(flat.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(pixels.shape)


def rgb(lab_pixels: np.ndarray) -> np.ndarray:
    """float32 CIE Lab (..., 3) → RGB uint8, clipped."""
    flat = np.ascontiguousarray(lab_pixels, np.float32).reshape(-1, 1, 3)
    out = cv2.cvtColor(flat, cv2.COLOR_Lab2RGB).reshape(lab_pixels.shape)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def transfer_color(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Give (n, 3) uint8 RGB pixels the Lab per-channel ``mean`` and ``std`` (each (3,))."""
    if pixels.shape[0] == 0:
        return pixels.copy()
    x = lab(pixels)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    y = (x - mu) / np.maximum(sd, 1e-3) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return rgb(y)


@dataclass(frozen=True)
class ColorDonors:
    """Lab mean and standard deviation of every bank segment, for colour transfer.

    Attributes:
        mean, std: (S, 3) float32 per segment id.
        class_id, image_id: (S,) per segment id.
    """

    mean: np.ndarray
    std: np.ndarray
    class_id: np.ndarray
    image_id: np.ndarray

    @classmethod
    def from_bank(cls, source: CachedSegments, progress: bool = False) -> ColorDonors:
        """Scan every image of the bank once (a few ms per image)."""
        bank = source.bank
        s = bank.num_segments
        sums = np.zeros((s, 3), np.float64)
        squares = np.zeros((s, 3), np.float64)
        counts = np.zeros(s, np.float64)
        for image_id in tqdm(range(bank.num_images), desc="colour statistics", disable=not progress, unit="image"):
            arrays = source.image(image_id)
            ids = source.segment_at(image_id, arrays.components).ravel()
            keep = ids >= 0
            ids = ids[keep]
            x = lab(arrays.photo).reshape(-1, 3)[keep].astype(np.float64)
            counts += np.bincount(ids, minlength=s)
            for c in range(3):
                sums[:, c] += np.bincount(ids, weights=x[:, c], minlength=s)
                squares[:, c] += np.bincount(ids, weights=x[:, c] ** 2, minlength=s)
        n = np.maximum(counts, 1)[:, None]
        mean = sums / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0))
        return cls(
            mean=mean.astype(np.float32),
            std=std.astype(np.float32),
            class_id=bank.column("class_id").astype(np.int64),
            image_id=bank.column("image_id").astype(np.int64),
        )

    def draw(self, class_id: int, exclude_image: int | None, rng: np.random.Generator) -> int | None:
        """A random segment id of ``class_id`` from another image, or None if there is none."""
        ok = self.class_id == class_id
        if exclude_image is not None:
            ok &= self.image_id != exclude_image
        ids = np.flatnonzero(ok)
        return int(ids[rng.integers(ids.size)]) if ids.size else None


# 2. One simulated canvas
def simulate_canvas(
    builder: CanvasBuilder,
    layout: np.ndarray,
    photo: np.ndarray,
    *,
    seed: int = 0,
    image_id: int | None = None,
    donors: ColorDonors | None = None,
    color_transfer: float = 0.2,
    jitter: SeamJitter | None = None,
) -> Canvas:
    """The simulated canvas of one training image (stencil, colour transfer, jitter, elision).

    Args:
        builder: supplies retrieval, the segment reader, the elision settings and object classes.
        layout: (H, W) uint8 label map of the training image at the bank's resolution.
        photo: (H, W, 3) uint8 training photo.
        seed: the same seed gives the same canvas.
        image_id: the training image's id in the builder's bank, if it is one: its own
            segments are excluded from retrieval and from colour donors, and the provenance
            map then names its own segment at every kept pixel. Otherwise provenance is -1.
        donors: colour statistics; without them no colour is transferred.
        color_transfer: share of components whose colour is transferred.
        jitter: seam jitter of kept segments (None: none); its own random stream, so canvases
            without it are the same as before it existed.

    ``Canvas.segments`` lists the retrieved stencil segments (``segment_id``) per component.
    """
    if not 0.0 <= color_transfer <= 1.0:
        raise ValueError(f"color_transfer must be in [0, 1], got {color_transfer}")
    layout = builder.check_layout(layout)
    if photo.shape != (*builder.resolution, 3) or photo.dtype != np.uint8:
        raise ValueError(f"photo must be {(*builder.resolution, 3)} uint8, got {photo.shape} {photo.dtype}")
    exclude = () if image_id is None else (int(image_id),)
    # 1. The same retrieval as at test time, from other images only.
    components, result = builder.query(layout, seed, exclude)
    own = _own_segment_ids(builder, image_id)
    rng = np.random.default_rng([seed, COLOR_STREAM])
    jitter_rng = np.random.default_rng([seed, JITTER_STREAM])
    pixels, masks, ids, placed, unfilled = [], [], [], [], []
    for comp in result.components:
        match = comp.chosen
        # Drawn for every component so that one component's outcome does not shift the others'.
        recolor = rng.random() < color_transfer
        donor_rng = np.random.default_rng(rng.integers(2**63))
        draw = None if jitter is None else jitter.draw(jitter_rng)
        if match is None:
            unfilled.append((comp.component_id, str(comp.status)))
            continue
        # 2. Stencil: the component cut by the retrieved segment's mask, showing the photo.
        stencil = component_mask(components, comp.component_id) & builder.read_segment(match.segment_id)[2]
        piece = photo
        if recolor and donors is not None:
            donor = donors.draw(comp.class_id, image_id, donor_rng)
            if donor is not None:
                piece = photo.copy()
                piece[stencil] = transfer_color(photo[stencil], donors.mean[donor], donors.std[donor])
        if draw is not None:
            piece = draw.apply(piece, stencil)
        pixels.append(piece)
        masks.append(stencil)
        ids.append(len(placed))
        rank = len(placed)
        placed.append(
            PlacedSegment(comp.component_id, comp.class_id, match.segment_id, match.image_id, match.score, rank)
        )
    # 3. Paste (stencils lie inside disjoint components, so the order does not matter).
    painted = composite(builder.resolution, pixels, masks, ids, list(range(len(pixels))))
    # 4. Elide, as at test time.
    elided = elide(
        painted.canvas,
        painted.missing,
        painted.pieces,
        layout,
        builder.object_classes,
        np.random.default_rng([seed, ELISION_STREAM]),
        builder.options.elision,
    )
    provenance = np.where((elided.code == 0) & (painted.pieces >= 0) & (own >= 0), own, NO_SEGMENT)
    return Canvas(
        canvas=elided.canvas,
        missing=elided.missing,
        provenance=provenance,
        elision=elided.code,
        segments=tuple(placed),
        unfilled=tuple(unfilled),
    )


def _own_segment_ids(builder: CanvasBuilder, image_id: int | None) -> np.ndarray:
    """Per pixel, the bank segment of the training image itself (-1 if unknown)."""
    source = builder.segments
    if image_id is None or not isinstance(source, CachedSegments):
        return np.full(builder.resolution, NO_SEGMENT, np.int64)
    return source.segment_at(int(image_id), source.image(int(image_id)).components)


# 3. Resizing to the training size
def resize_sample(
    layout: np.ndarray, canvas: np.ndarray, missing: np.ndarray, photo: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resize to ``size`` (H, W): :func:`resize_inputs`, and the photo as the canvas."""
    if size is None or tuple(layout.shape) == tuple(size):
        return layout, canvas, missing, photo
    layout, canvas, missing = resize_inputs(layout, canvas, missing, size)
    return layout, canvas, missing, resize_photo(photo, size)


def resize_inputs(
    layout: np.ndarray, canvas: np.ndarray, missing: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's inputs at ``size`` (H, W): ``layout`` and ``missing`` by nearest neighbour, the
    canvas as a photo (:mod:`memory_bank.images`).

    Training (through :func:`resize_sample`) and inference (``synthesis.pipeline``) both resize here.
    """
    if tuple(layout.shape) == tuple(size):
        return layout, canvas, missing
    return resize_label(layout, size), resize_photo(canvas, size), resize_label(missing, size)


# 4. The cache
@dataclass(frozen=True)
class CacheInfo:
    """``cache.json``: what a canvas cache holds and how it was made."""

    format: int
    bank_version: str
    size: tuple[int, int]
    variants: int
    seed: int
    color_transfer: float
    options: dict[str, Any]
    images: tuple[int, ...]
    complete: bool = False
    bands: tuple[float, ...] = ()
    jitter: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["images"], d["bands"] = list(self.size), list(self.images), list(self.bands)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheInfo:
        if d.get("format") != CACHE_FORMAT:
            raise ValueError(f"unsupported canvas cache format {d.get('format')!r} (expected {CACHE_FORMAT})")
        bands = tuple(float(b) for b in d.get("bands", ()))
        return cls(**{**d, "size": tuple(d["size"]), "images": tuple(d["images"]), "bands": bands})

    def same_recipe(self, other: CacheInfo) -> bool:
        a, b = self.to_dict(), other.to_dict()
        a.pop("complete"), b.pop("complete")
        return a == b


def sample_name(image_id: int, variant: int) -> str:
    return f"{image_id:06d}_{variant:02d}.npz"


def variant_seed(seed: int, image_id: int, variant: int) -> int:
    """The canvas seed of one image and variant: independent streams from one base seed."""
    return int(np.random.SeedSequence([seed, image_id, variant]).generate_state(1)[0])


def write_canvas_cache(
    bank: Bank,
    out_dir: str | Path,
    *,
    variants: int = 4,
    size: tuple[int, int] | None = (96, 128),
    seed: int = 0,
    color_transfer: float = 0.2,
    options: CanvasOptions | None = None,
    images: Sequence[int] | None = None,
    bands: Sequence[float] = (),
    jitter: SeamJitter | None = None,
    progress: bool = True,
) -> CacheInfo:
    """Precompute ``variants`` simulated canvases per bank image at ``size`` (H, W) into ``out_dir``.

    Every sample is its own ``<image>_<variant>.npz`` (``layout`` uint8, ``canvas`` uint8
    (H, W, 3), ``missing`` bool, ``photo`` uint8 (H, W, 3), ``elision`` uint8 codes), written to a
    temporary file and renamed, so a killed run leaves only whole files. ``bands`` (fractions of
    the frame height) gives variant ``v`` the elision band ``bands[v % len(bands)]`` instead of
    ``options.elision.band``, so one cache trains a network for several test-time bands.
    ``jitter`` gives the kept segments seams (:mod:`synthesis.canvas.seam_jitter`).
    Rerunning with the same settings resumes: existing samples are kept. ``cache.json`` records
    the recipe; it says ``complete`` once every sample is written. A directory holding a cache
    made another way is an error.
    """
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = options or CanvasOptions()
    ids = tuple(range(bank.num_images)) if images is None else tuple(int(i) for i in images)
    bad = [i for i in ids if not 0 <= i < bank.num_images]
    if bad:
        raise ValueError(f"image ids {bad[:5]} are not in the bank (0..{bank.num_images - 1})")
    frame = tuple(bank.resolution) if size is None else (int(size[0]), int(size[1]))
    info = CacheInfo(
        format=CACHE_FORMAT,
        bank_version=bank.version,
        size=frame,  # type: ignore[arg-type]
        variants=variants,
        seed=seed,
        color_transfer=color_transfer,
        options=json.loads(json.dumps(asdict(options))),
        images=ids,
        bands=tuple(float(b) for b in bands),
        jitter=None if jitter is None else jitter.to_dict(),
    )
    manifest = out / CACHE_MANIFEST
    if manifest.exists():
        old = CacheInfo.from_dict(json.loads(manifest.read_text()))
        if not old.same_recipe(info):
            raise ValueError(f"{out} holds a canvas cache made with other settings; use another directory")
    write_json_atomic(manifest, info.to_dict())
    builder = CanvasBuilder.from_bank(bank, options=options)
    # One shallow copy per band: they share the retriever and the segment cache.
    builders = [builder]
    for band in info.bands:
        variant_builder = copy.copy(builder)
        variant_builder.options = replace(options, elision=replace(options.elision, band=band))
        builders.append(variant_builder)
    donors = ColorDonors.from_bank(builder.segments, progress=progress) if color_transfer > 0 else None  # type: ignore[arg-type]
    todo = [(i, v) for i in ids for v in range(variants) if not (out / sample_name(i, v)).exists()]
    logger.info("canvas cache %s: %d of %d samples to write", out, len(todo), len(ids) * variants)
    for image_id, v in tqdm(todo, desc="simulated canvases", disable=not progress, unit="canvas"):
        arrays = builder.segments.image(image_id)  # type: ignore[attr-defined]
        canvas = simulate_canvas(
            builders[1 + v % len(info.bands)] if info.bands else builder,
            arrays.label,
            arrays.photo,
            seed=variant_seed(seed, image_id, v),
            image_id=image_id,
            donors=donors,
            color_transfer=color_transfer,
            jitter=jitter,
        )
        layout, img, missing, photo = resize_sample(arrays.label, canvas.canvas, canvas.missing, arrays.photo, frame)
        code = resize_label(canvas.elision, frame)
        with atomic_file(out / sample_name(image_id, v), "wb") as f:
            np.savez_compressed(f, layout=layout, canvas=img, missing=missing, photo=photo, elision=code)
    info = CacheInfo(**{**asdict(info), "complete": True})
    write_json_atomic(manifest, info.to_dict())
    return info


# 5. The dataset
class SimulatedCanvasDataset(torch.utils.data.Dataset):
    """Training samples from a canvas cache written by :func:`write_canvas_cache`.

    Each item is a dict:

    - ``layout``: int64 (H, W), class ids, 255 = unlabelled;
    - ``canvas``: float32 (3, H, W) in [0, 1];
    - ``missing``: float32 (1, H, W), 1 where the canvas has no pixel;
    - ``photo``: float32 (3, H, W) in [0, 1].

    ``size`` (H, W) resizes on the fly (nearest for layout and missing, area for images); by
    default samples come at the cache's size. With ``full_resolution``, items also carry the
    cache's own-size ``full_canvas`` (3, H, W), ``full_kept`` (1, H, W; real canvas pixels, see
    :func:`~synthesis.canvas.elision.kept_pixels`), ``full_photo`` (3, H, W) and ``full_layout``
    (H, W), which train the full-resolution canvas blend and hole refiner. ``variants`` limits
    how many variants per image are used.
    Items are ordered image-major: index ``i`` is image ``i // V``, variant ``i % V``.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        size: tuple[int, int] | None = None,
        variants: int | None = None,
        images: Sequence[int] | None = None,
        full_resolution: bool = False,
    ) -> None:
        self.root = Path(cache_dir)
        manifest = self.root / CACHE_MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a canvas cache (no {CACHE_MANIFEST}); run `sims canvas simulate`"
            )
        self.info = CacheInfo.from_dict(json.loads(manifest.read_text()))
        if not self.info.complete:
            raise ValueError(f"canvas cache {self.root} is incomplete; rerun `sims canvas simulate` to finish it")
        self.variants = self.info.variants if variants is None else min(int(variants), self.info.variants)
        if self.variants < 1:
            raise ValueError(f"variants must be >= 1, got {variants}")
        self.images = self.info.images if images is None else tuple(int(i) for i in images)
        unknown = set(self.images) - set(self.info.images)
        if unknown:
            raise ValueError(f"images {sorted(unknown)[:5]} are not in the cache")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.full_resolution = bool(full_resolution)

    def __len__(self) -> int:
        return len(self.images) * self.variants

    def load_stored(self, index: int) -> dict[str, np.ndarray]:
        """The stored arrays of one item at the cache's size, as numpy (caches without codes: all kept)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image_id, v = self.images[index // self.variants], index % self.variants
        with np.load(self.root / sample_name(image_id, v)) as z:
            stored = {k: z[k] for k in ("layout", "canvas", "missing", "photo")}
            stored["elision"] = z["elision"] if "elision" in z.files else np.zeros_like(stored["layout"])
        return stored

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of one item, resized to ``size``, as numpy (uint8 / bool)."""
        a = self.load_stored(index)
        layout, canvas, missing, photo = resize_sample(a["layout"], a["canvas"], a["missing"], a["photo"], self.size)
        return {"layout": layout, "canvas": canvas, "missing": missing, "photo": photo}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        stored = self.load_stored(index)
        layout, canvas, missing, photo = resize_sample(
            stored["layout"], stored["canvas"], stored["missing"], stored["photo"], self.size
        )
        item = {**input_tensors(layout, canvas, missing), "photo": image_tensor(photo)}
        if self.full_resolution:
            kept = kept_pixels(stored["missing"], stored["elision"])
            item["full_canvas"] = image_tensor(stored["canvas"])
            item["full_kept"] = mask_tensor(kept)
            item["full_photo"] = image_tensor(stored["photo"])
            item["full_layout"] = label_tensor(stored["layout"])
        return item


__all__ = [
    "CacheInfo",
    "ColorDonors",
    "SimulatedCanvasDataset",
    "resize_inputs",
    "resize_sample",
    "simulate_canvas",
    "transfer_color",
    "write_canvas_cache",
]
