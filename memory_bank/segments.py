"""Segments (paper §4.1): connected components of one class, with their mask and context.

The indexer runs these functions over every dataset label map; the retrieval engine runs the
very same functions over query layouts. Keep it that way, or scores silently stop meaning the
same thing on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage

from memory_bank.classes import IGNORE
from memory_bank.config import SegmentConfig
from memory_bank.errors import LayoutError


@dataclass(frozen=True)
class Segments:
    """The kept components of one label map, in extraction order.

    Attributes:
        component_map: (H, W) uint16; ``i + 1`` where component ``i`` lies, 0 elsewhere
            (unlabelled pixels and dropped components). None once written to a bank.
        class_id: (n,) uint8.
        bbox: (n, 4) int32 ``[y0, x0, y1, x1)`` in pixels, end exclusive.
        context_box: (n, 4) int32, the bbox scaled by ``context_scale`` about its centre,
            rounded outwards and clipped to the frame.
        area: (n,) int32 pixel count.
        centroid: (n, 2) float32 ``(y, x)`` in pixels.
        dropped: number of components below ``min_area``.
        dropped_area: their total pixel count.
        size: (H, W) of the frame.
    """

    component_map: np.ndarray
    class_id: np.ndarray
    bbox: np.ndarray
    context_box: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    dropped: int
    dropped_area: int
    size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.class_id.shape[0])

    @property
    def frame(self) -> tuple[int, int]:
        return self.size

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool footprint of component ``i`` in the full frame."""
        return self.component_map == i + 1


@lru_cache(maxsize=8)
def _pixel_coordinates(frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat row and column index of every pixel, as float64 weights for bincount."""
    h, w = frame
    return np.repeat(np.arange(h, dtype=np.float64), w), np.tile(np.arange(w, dtype=np.float64), h)


def check_label_map(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Validate a label map and return it as a C-contiguous uint8 array."""
    return _checked(label, num_classes)[0]


def _checked(label: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The validated uint8 label map and the class ids present in it."""
    if label.ndim != 2:
        raise LayoutError(f"a label map must be 2-D (H, W), got shape {tuple(label.shape)}")
    if label.size == 0:
        raise LayoutError("the label map is empty (zero pixels)")
    if label.dtype.kind not in "ui":
        raise LayoutError(f"a label map must hold integer class ids, got dtype {label.dtype}")
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > IGNORE:
            raise LayoutError(f"label values must lie in 0..{IGNORE}, got {label.min()}..{label.max()}")
        label = label.astype(np.uint8)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = present[(present >= num_classes) & (present != IGNORE)]
    if bad.size:
        raise LayoutError(
            f"label map holds class ids {bad[:8].tolist()} outside the class table "
            f"(valid: 0..{num_classes - 1}, and {IGNORE} for unlabelled)"
        )
    return np.ascontiguousarray(label), present[present < num_classes]


def context_box(bbox: np.ndarray, frame: tuple[int, int], scale: float) -> np.ndarray:
    """Scale ``[y0, x0, y1, x1)`` boxes by ``scale`` about their centres, clipped to ``frame``."""
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 4)
    h, w = frame
    cy, cx = (bbox[:, 0] + bbox[:, 2]) / 2, (bbox[:, 1] + bbox[:, 3]) / 2
    hy, hx = (
        (bbox[:, 2] - bbox[:, 0]) * scale / 2,
        (bbox[:, 3] - bbox[:, 1]) * scale / 2,
    )
    # A tiny epsilon keeps exact integers (e.g. 12.0) from being pushed outwards by rounding noise.
    eps = 1e-9
    out = np.stack(
        [
            np.clip(np.floor(cy - hy + eps), 0, h),
            np.clip(np.floor(cx - hx + eps), 0, w),
            np.clip(np.ceil(cy + hy - eps), 0, h),
            np.clip(np.ceil(cx + hx - eps), 0, w),
        ],
        axis=1,
    )
    return out.astype(np.int32)


def extract_segments(label: np.ndarray, num_classes: int, config: SegmentConfig) -> Segments:
    """Cut a label map into per-class connected components and drop the small ones.

    Components are ordered by class id, then by the raster order of their first pixel (the
    numbering ``scipy.ndimage.label`` also uses). Pixels equal to :data:`IGNORE` belong to
    no component.
    """
    label, present = _checked(label, num_classes)
    h, w = label.shape
    # 1. Label each class on its own (OpenCV is ~4x faster than scipy.ndimage.label here;
    #    a property test holds it to scipy's answer).
    all_cc = np.zeros((h, w), np.int32)
    comp_class = [0]
    offset = np.zeros(256, np.int32)  # per class: how many components were numbered before it
    for c in present:
        n, cc = cv2.connectedComponents((label == c).view(np.uint8), connectivity=config.connectivity, ltype=cv2.CV_32S)
        if n > 1:  # label 0 is the background
            offset[c] = len(comp_class) - 1
            np.add(all_cc, cc, out=all_cc)
            comp_class.extend([int(c)] * (n - 1))
    # 2. Classes are disjoint: one lookup moves each class's numbers past the previous ones
    #    (IGNORE pixels get offset 0 and stay 0).
    all_cc += offset[label]
    total = len(comp_class) - 1
    # 3. Drop small components.
    area = np.bincount(all_cc.ravel(), minlength=total + 1)
    keep = np.flatnonzero(area[1:] >= config.min_area) + 1
    if keep.size >= np.iinfo(np.uint16).max:
        raise LayoutError(f"more than {np.iinfo(np.uint16).max - 1} segments in one label map")
    # 4. Boxes, centroids and first pixels of the kept ones, without a per-component scan:
    #    weighted counts give the centroids, and a first pixel in raster order lies in its top row.
    slices = ndimage.find_objects(all_cc, max_label=total)
    bbox = np.array(
        [(sy.start, sx.start, sy.stop, sx.stop) for sy, sx in (slices[k - 1] for k in keep)], np.int32
    ).reshape(-1, 4)
    rows, cols = _pixel_coordinates((h, w))
    flat = all_cc.ravel()
    # Pixel (r, c) covers [r, r + 1) x [c, c + 1), so its centre is (r + 0.5, c + 0.5).
    centroid = np.stack(
        [
            np.bincount(flat, weights=rows, minlength=total + 1)[keep] / area[keep] + 0.5,
            np.bincount(flat, weights=cols, minlength=total + 1)[keep] / area[keep] + 0.5,
        ],
        axis=1,
    )
    first = np.array(
        [y0 * w + x0 + int(np.argmax(all_cc[y0, x0:x1] == k)) for k, (y0, x0, _, x1) in zip(keep, bbox, strict=True)],
        np.int64,
    )
    # 5. Number the kept ones 1..n, class-major then in raster order of their first pixel
    #    (OpenCV's block-based scan numbers them differently).
    class_of = np.asarray(comp_class, np.uint8)[keep]
    order = np.lexsort((first, class_of))
    keep, bbox, centroid = keep[order], bbox[order], centroid[order]
    remap = np.zeros(total + 1, np.uint16)
    remap[keep] = np.arange(1, keep.size + 1, dtype=np.uint16)
    kept_area = area[keep]
    return Segments(
        component_map=remap[all_cc],
        class_id=class_of[order],
        bbox=bbox,
        context_box=context_box(bbox, (h, w), config.context_scale),
        area=kept_area.astype(np.int32),
        centroid=centroid.astype(np.float32),
        dropped=int(total - keep.size),
        dropped_area=int(area[1:].sum() - kept_area.sum()),
        size=(h, w),
    )


def segment_context(label: np.ndarray, box: np.ndarray | tuple[int, int, int, int]) -> np.ndarray:
    """Full-frame context of a segment: the label map inside its context box, IGNORE outside."""
    y0, x0, y1, x1 = (int(v) for v in box)
    out = np.full(label.shape, IGNORE, np.uint8)
    out[y0:y1, x0:x1] = label[y0:y1, x0:x1]
    return out
