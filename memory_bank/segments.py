"""Segments (paper §4.1): connected components of one class, or instances of a thing class,
with their mask and context.

The indexer runs these functions over every dataset label map; the retrieval engine runs the
very same functions over query layouts. Keep it that way, or scores silently stop meaning the
same thing on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory_bank.classes import IGNORE
from memory_bank.components import label_components, label_instances
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
        instance_id: (n,) int32, the instance map's id of an instance segment, 0 for a
            connected component.
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
    instance_id: np.ndarray
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


def check_label_map(label: np.ndarray, num_classes: int, resolution: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a label map and return it as a C-contiguous uint8 array.

    The one layout check of SIMS: bank builds, the engine, the canvas builder and the HTTP
    services all go through it. ``resolution`` is the (H, W) a query layout must have (the
    bank's working resolution).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise LayoutError(f"a label map must be 2-D (H, W), got shape {tuple(label.shape)}")
    if resolution is not None:
        check_layout_size(label.shape, resolution)
    if label.size == 0:
        raise LayoutError("the label map is empty (zero pixels)")
    if label.dtype.kind not in "ui":
        raise LayoutError(f"a label map must hold integer class ids, got dtype {label.dtype}")
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > IGNORE:
            raise LayoutError(f"label values must lie in 0..{IGNORE}, got {label.min()}..{label.max()}")
        label = label.astype(np.uint8)
    # Every value >= num_classes must be IGNORE: two vectorised counts check it (~20x faster
    # than a histogram, which only the error message needs).
    if np.count_nonzero(label >= num_classes) != np.count_nonzero(label == IGNORE):
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = present[(present >= num_classes) & (present != IGNORE)]
        raise LayoutError(
            f"label map holds class ids {bad[:8].tolist()} outside the class table "
            f"(valid: 0..{num_classes - 1}, and {IGNORE} for unlabelled)"
        )
    return np.ascontiguousarray(label)


def check_instance_map(instances: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate an instance map for a label map of ``shape``; return it as C-contiguous int32.

    An instance map holds, per pixel, the id of the object it belongs to (0 = none); ids are
    per image, so the same id in two thing classes names two objects.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise LayoutError(f"an instance map must be 2-D (H, W), got shape {tuple(instances.shape)}")
    if instances.shape != tuple(shape):
        (h, w), (rows, cols) = instances.shape, shape
        raise LayoutError(
            f"the instance map is {w}x{h} (WxH) but its layout is {cols}x{rows}", kind="wrong_instance_size"
        )
    if instances.dtype.kind not in "uib":
        raise LayoutError(f"an instance map must hold integer ids, got dtype {instances.dtype}")
    if instances.dtype != np.int32 and instances.size:
        lo, hi = int(instances.min()), int(instances.max())
        if lo < 0 or hi > np.iinfo(np.int32).max:
            raise LayoutError(f"instance ids must lie in 0..{np.iinfo(np.int32).max}, got {lo}..{hi}")
    elif instances.size and instances.min() < 0:
        raise LayoutError(f"instance ids must be >= 0, got {int(instances.min())}")
    return np.ascontiguousarray(instances, np.int32)


def check_layout_size(
    shape: tuple[int, ...], resolution: tuple[int, int], hint: str = "resize it with nearest-neighbour sampling first"
) -> None:
    """A :class:`LayoutError` of kind ``wrong_layout_size`` unless a layout of ``shape`` (H, W) has ``resolution``.

    ``hint`` ends the message: what the caller can do about it."""
    (h, w), (rows, cols) = shape[:2], resolution
    if (h, w) != (rows, cols):
        raise LayoutError(
            f"the layout is {w}x{h} (WxH) but the bank's working resolution is {cols}x{rows}; {hint}",
            kind="wrong_layout_size",
        )


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


def extract_segments(
    label: np.ndarray, num_classes: int, config: SegmentConfig, instances: np.ndarray | None = None
) -> Segments:
    """Cut a label map into segments and drop the small ones.

    The one cut of SIMS, for bank images and query layouts alike. A segment is a connected
    component of one class; with ``config.instances == "things"`` and an ``instances`` map, each
    (thing class, nonzero instance id) is one segment instead, all of its pixels even when
    occlusion splits them (thing pixels of instance 0 stay connected components). Without that
    setting ``instances`` is ignored. Segments are ordered by class id, then by the raster
    order of their first pixel (for components, the numbering ``scipy.ndimage.label`` uses).
    Pixels equal to :data:`IGNORE` belong to no segment.
    """
    label = check_label_map(label, num_classes)
    h, w = label.shape
    # 1. Every component of every class in one compiled pass, numbered in raster order of
    #    its first pixel (a property test holds it to scipy.ndimage.label per class).
    if instances is not None and config.instances == "things":
        instances = check_instance_map(instances, label.shape)
        comps = label_instances(label, instances, config.thing_classes, config.connectivity)
    else:
        comps = label_components(label, config.connectivity)
    total = len(comps)
    # 2. Drop small components.
    keep = np.flatnonzero(comps.area >= config.min_area)
    if keep.size >= np.iinfo(np.uint16).max:
        raise LayoutError(f"more than {np.iinfo(np.uint16).max - 1} segments in one label map")
    # 3. Number the kept ones 1..n, class-major then in raster order of their first pixel: the
    #    components already come in raster order, so a stable sort by class finishes the job.
    keep = keep[np.argsort(comps.class_id[keep], kind="stable")]
    kept_area = comps.area[keep]
    bbox = comps.bbox[keep]
    # Pixel (r, c) covers [r, r + 1) x [c, c + 1), so its centre is (r + 0.5, c + 0.5).
    centroid = np.stack([comps.row_sum[keep] / kept_area + 0.5, comps.col_sum[keep] / kept_area + 0.5], axis=1)
    remap = np.zeros(total + 1, np.uint16)
    remap[keep + 1] = np.arange(1, keep.size + 1, dtype=np.uint16)
    return Segments(
        component_map=remap[comps.label_map],
        class_id=comps.class_id[keep],
        bbox=bbox,
        context_box=context_box(bbox, (h, w), config.context_scale),
        area=kept_area.astype(np.int32),
        centroid=centroid.astype(np.float32),
        instance_id=np.zeros(keep.size, np.int32) if comps.instance_id is None else comps.instance_id[keep],
        dropped=int(total - keep.size),
        dropped_area=int(comps.area.sum() - kept_area.sum()),
        size=(h, w),
    )


def segment_context(label: np.ndarray, box: np.ndarray | tuple[int, int, int, int]) -> np.ndarray:
    """Full-frame context of a segment: the label map inside its context box, IGNORE outside."""
    y0, x0, y1, x1 = (int(v) for v in box)
    out = np.full(label.shape, IGNORE, np.uint8)
    out[y0:y1, x0:x1] = label[y0:y1, x0:x1]
    return out
