"""One image ready to enter a bank: photo and labels at working resolution, segments and codes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from memory_bank.classes import ClassTable
from memory_bank.codes import SegmentCodes, encode_segments
from memory_bank.config import Grid, SegmentConfig
from memory_bank.errors import LayoutError
from memory_bank.images import resize_label, resize_photo
from memory_bank.segments import Segments, extract_segments


@dataclass(frozen=True)
class ImageRecord:
    """An image, its label map, its kept segments with their codes, and where it came from."""

    photo: np.ndarray | None  # (H, W, 3) uint8 at working resolution; None once written
    label: np.ndarray | None  # (H, W) uint8 at working resolution; None once written
    segments: Segments
    codes: SegmentCodes
    dataset: str
    split: str
    source_file: str
    label_file: str
    source_size: Grid

    def without_pixels(self) -> ImageRecord:
        """The same record minus its full-frame arrays (after a worker wrote them to the bank)."""
        return replace(
            self,
            photo=None,
            label=None,
            segments=replace(self.segments, component_map=None),
        )


def make_record(
    photo: np.ndarray,
    label: np.ndarray,
    *,
    classes: ClassTable,
    config: SegmentConfig,
    resolution: Grid,
    dataset: str,
    split: str,
    source_file: str,
    label_file: str,
    instances: np.ndarray | None = None,
) -> ImageRecord:
    """Resize a photo/label pair to ``resolution``, then extract and code its segments.

    ``instances`` is the pair's (H, W) instance map, if any (used when ``config`` cuts per instance)."""
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise LayoutError(f"{source_file}: photo must be (H, W, 3), got {photo.shape}")
    if photo.shape[:2] != label.shape:
        raise LayoutError(
            f"{source_file}: photo is {photo.shape[1]}x{photo.shape[0]} but its label map "
            f"{label_file} is {label.shape[1]}x{label.shape[0]}"
        )
    if instances is not None and instances.shape != label.shape:
        raise LayoutError(
            f"{label_file}: its instance map is {instances.shape[1]}x{instances.shape[0]}, "
            f"the label map {label.shape[1]}x{label.shape[0]}"
        )
    source_size = (int(label.shape[0]), int(label.shape[1]))
    label = resize_label(label, resolution)
    if instances is not None:
        instances = resize_label(instances, resolution)  # nearest, keeps the ids and their dtype
    photo = resize_photo(photo, resolution)
    try:
        segments = extract_segments(label, len(classes), config, instances)  # validates the label values too
    except LayoutError as e:
        raise LayoutError(f"{label_file}: {e}") from None
    label = label.astype(np.uint8, copy=False)
    codes = encode_segments(label, segments, len(classes), config)
    return ImageRecord(
        photo,
        label,
        segments,
        codes,
        dataset,
        split,
        source_file,
        label_file,
        source_size,
    )
