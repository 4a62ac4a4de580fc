"""Query layouts: the same segments and codes as the bank's, computed with memory_bank."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from memory_bank import SegmentCodes, SegmentConfig, Segments, encode_segments, extract_segments
from memory_bank.segments import check_label_map


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


def prepare_query(
    label: np.ndarray,
    num_classes: int,
    config: SegmentConfig,
    resolution: tuple[int, int],
    instances: np.ndarray | None = None,
    *,
    checked: bool = False,
) -> Query:
    """Cut a query layout into components and code them exactly as the bank's were coded.

    ``instances`` (an (H, W) instance map, 0 = none) cuts thing classes per instance when the
    bank was built so (``config.instances``); otherwise it is ignored, as the bank's cut is.
    ``checked``: the caller already passed ``label`` through
    :func:`~memory_bank.segments.check_label_map` for this bank (so it is not checked again).
    """
    if not checked:
        label = check_label_map(label, num_classes, resolution)
    all_components = replace(config, min_area=1)
    segments = extract_segments(label, num_classes, all_components, instances)
    codes = encode_segments(label, segments, num_classes, all_components)
    return Query(label=label, segments=segments, codes=codes)
