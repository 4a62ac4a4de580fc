"""Compositing: paint placed segments back to front, keeping track of where each pixel came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Provenance and piece value of a pixel that no segment supplied.
NO_SEGMENT = -1


@dataclass(frozen=True)
class Composite:
    """A painted canvas before elision.

    Attributes:
        canvas: (H, W, 3) uint8; 0 where missing.
        missing: (H, W) bool; True where no segment supplied a pixel.
        pieces: (H, W) int32; index (into the painted list) of the segment on top, -1 for none.
        provenance: (H, W) int64; the bank segment id of the segment on top, -1 for none.
    """

    canvas: np.ndarray
    missing: np.ndarray
    pieces: np.ndarray
    provenance: np.ndarray


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, x0, y1, x1)`` of a mask's pixels, end exclusive; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def composite(
    frame: tuple[int, int],
    pixels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    segment_ids: Sequence[int],
    order: Sequence[int],
) -> Composite:
    """Paint ``pixels[i]`` under ``masks[i]`` for ``i`` in ``order`` (back to front: the last is on top).

    Every ``pixels[i]`` is (H, W, 3) uint8 and every ``masks[i]`` (H, W) bool in ``frame``;
    ``segment_ids[i]`` is what the provenance map records for segment ``i``. Indices missing
    from ``order`` are not painted.
    """
    n = len(pixels)
    if len(masks) != n or len(segment_ids) != n:
        raise ValueError(f"{n} pixel arrays, {len(masks)} masks and {len(segment_ids)} segment ids")
    if sorted(set(order)) != sorted(order) or any(not 0 <= i < n for i in order):
        raise ValueError(f"order must list distinct indices in 0..{n - 1}, got {list(order)}")
    h, w = frame
    for i in order:
        if pixels[i].shape != (h, w, 3) or masks[i].shape != (h, w):
            raise ValueError(
                f"segment {i}: pixels {pixels[i].shape} and mask {masks[i].shape} are not in frame {frame}"
            )
        if pixels[i].dtype != np.uint8 or masks[i].dtype != bool:
            raise ValueError(
                f"segment {i}: pixels must be uint8 and masks bool, got {pixels[i].dtype}, {masks[i].dtype}"
            )
    # 1. Which piece ends on top at every pixel: later ones overwrite earlier ones.
    pieces = np.full((h, w), NO_SEGMENT, np.int32)
    boxes = {}
    for i in order:
        box = mask_box(masks[i])
        if box is None:
            continue
        boxes[i] = box
        y0, x0, y1, x1 = box
        # cv2.copyTo writes into the view in place, ~100x faster than numpy's masked assignment.
        fill = np.full((y1 - y0, x1 - x0), i, np.int32)
        cv2.copyTo(fill, masks[i][y0:y1, x0:x1].view(np.uint8), pieces[y0:y1, x0:x1])
    # 2. Copy each piece's visible pixels, inside its own box only.
    canvas = np.zeros((h, w, 3), np.uint8)
    for i, (y0, x0, y1, x1) in boxes.items():
        visible = (pieces[y0:y1, x0:x1] == i).view(np.uint8)
        cv2.copyTo(np.ascontiguousarray(pixels[i][y0:y1, x0:x1]), visible, canvas[y0:y1, x0:x1])
    ids = np.asarray([*segment_ids, NO_SEGMENT], np.int64)
    provenance = ids[pieces]  # index -1 picks the appended NO_SEGMENT
    return Composite(canvas=canvas, missing=pieces == NO_SEGMENT, pieces=pieces, provenance=provenance)
