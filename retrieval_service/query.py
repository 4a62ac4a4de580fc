"""Query layouts: the same segments and codes as the bank's, computed with memory_bank."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from memory_bank import LayoutError, SegmentCodes, SegmentConfig, Segments, encode_segments, extract_segments


@dataclass(frozen=True)
class Query:
    """Every connected component of a layout with its codes, at the bank's resolution and grid.

    Components are extracted with ``min_area=1`` so that none disappears silently; the
    engine reports those below the minimum area with a status instead of a match.
    """

    label: np.ndarray  # (H, W) uint8
    segments: Segments
    codes: SegmentCodes
    cache: dict[str, Any] = field(default_factory=dict, compare=False)  # derived data, e.g. pixel frames

    def __len__(self) -> int:
        return len(self.segments)


def prepare_query(label: np.ndarray, num_classes: int, config: SegmentConfig, resolution: tuple[int, int]) -> Query:
    """Cut a query layout into components and code them exactly as the bank's were coded."""
    if label.ndim != 2:
        raise LayoutError(f"a layout must be a 2-D label map, got shape {tuple(label.shape)}")
    if tuple(label.shape) != tuple(resolution):
        raise LayoutError(
            f"layout is {label.shape[1]}x{label.shape[0]} (WxH) but the bank's working resolution is "
            f"{resolution[1]}x{resolution[0]}; resize it (nearest neighbour) first"
        )
    all_components = replace(config, min_area=1)
    segments = extract_segments(label, num_classes, all_components)
    codes = encode_segments(label, segments, num_classes, all_components)
    return Query(label=np.asarray(label, np.uint8), segments=segments, codes=codes)
