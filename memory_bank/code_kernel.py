"""The fine grid cells of every segment of a label map, in one compiled pass (numba).

:func:`~memory_bank.codes.encode_segments` calls this on the indexing path and the query
path alike. It computes exactly what :func:`~memory_bank.codes.mask_cells`,
:func:`~memory_bank.codes.label_grid`, :func:`~memory_bank.codes.box_cells` and
:func:`~memory_bank.codes.coarse_code` define in numpy (tests hold it to them), but from one
pass over the pixels instead of a dense (cells x segments) bincount and several full-frame
temporaries: ~1 ms instead of ~4 ms for a 360x480 layout, a large share of a fast-mode query.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from memory_bank.classes import IGNORE
from memory_bank.config import Grid
from memory_bank.grid import cell_centers, cell_pixel_counts


@numba.njit(cache=True, nogil=True)
def _fine_cells(
    label: np.ndarray,  # (H, W) uint8
    component_map: np.ndarray,  # (H, W) uint16, 1..n
    n: int,
    class_id: np.ndarray,  # (n,) uint8
    boxes: np.ndarray,  # (n, 4) context boxes [y0, x0, y1, x1)
    row_cell: np.ndarray,  # (H,) grid row of each pixel row
    col_cell: np.ndarray,  # (W,) grid column of each pixel column
    gw: int,
    size: np.ndarray,  # (cells,) pixels per cell
    cy: np.ndarray,  # (gh,) cell centres
    cx: np.ndarray,  # (gw,) cell centres
    num_classes: int,
    ignore: int,
    coarse_cell: np.ndarray,  # (levels, cells): each fine cell's bit in the coarse code
    coarse_bits: int,
) -> tuple:
    h, w = label.shape
    cells = size.size
    counts = np.zeros((n, cells), np.int32)
    votes = np.zeros((cells, num_classes + 1), np.int32)
    for y in range(h):
        base = row_cell[y] * gw
        for x in range(w):
            cell = base + col_cell[x]
            k = component_map[y, x]
            if k:
                counts[k - 1, cell] += 1
            v = label[y, x]
            votes[cell, num_classes if v == ignore else v] += 1
    # Majority label per cell: ties to the lowest class id, unlabelled last.
    grid_label = np.empty(cells, np.uint8)
    for cell in range(cells):
        best = 0
        for v in range(1, num_classes + 1):
            if votes[cell, v] > votes[cell, best]:
                best = v
        grid_label[cell] = ignore if best == num_classes else best
    bits = np.zeros((n, cells), np.bool_)
    context = np.full((n, cells), ignore, np.uint8)
    for i in range(n):
        # Cells at least half covered, plus the best covered one (first in cell order).
        best_cell = 0
        best_frac = -1.0
        for cell in range(cells):
            c = counts[i, cell]
            if 2 * c >= size[cell]:
                bits[i, cell] = True
            frac = c / size[cell]
            if frac > best_frac:
                best_frac = frac
                best_cell = cell
        bits[i, best_cell] = True
        y0, x0, y1, x1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        for r in range(cy.size):
            in_rows = cy[r] >= y0 and cy[r] < y1
            for col in range(gw):
                cell = r * gw + col
                if bits[i, cell]:
                    context[i, cell] = class_id[i]
                elif in_rows and cx[col] >= x0 and cx[col] < x1:
                    context[i, cell] = grid_label[cell]
    # The coarse code: mask cells OR-pooled to every coarse grid.
    coarse = np.zeros((n, coarse_bits), np.bool_)
    for i in range(n):
        for cell in range(cells):
            if bits[i, cell]:
                for level in range(coarse_cell.shape[0]):
                    coarse[i, coarse_cell[level, cell]] = True
    return bits, context, coarse


def fine_cells(
    label: np.ndarray,
    component_map: np.ndarray,
    class_id: np.ndarray,
    context_boxes: np.ndarray,
    num_classes: int,
    grid: Grid,
    coarse_grids: tuple[Grid, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask cells (n, cells) bool, contexts (n, cells) uint8 and unpacked coarse codes
    (n, coarse bits) bool of the segments of one map.

    ``component_map`` numbers the segments 1..n (0 elsewhere). See
    :mod:`memory_bank.codes` for what the cells mean.
    """
    frame = tuple(label.shape)
    (h, w), (gh, gw) = frame, grid
    cy, cx = cell_centers(frame, grid)
    return _fine_cells(
        np.ascontiguousarray(label, np.uint8),
        np.ascontiguousarray(component_map, np.uint16),
        int(class_id.size),
        np.ascontiguousarray(class_id, np.uint8),
        np.ascontiguousarray(context_boxes, np.int64).reshape(-1, 4),
        np.arange(h, dtype=np.int64) * gh // h,
        np.arange(w, dtype=np.int64) * gw // w,
        gw,
        np.ascontiguousarray(cell_pixel_counts(frame, grid), np.int64),
        np.ascontiguousarray(cy, np.float64),
        np.ascontiguousarray(cx, np.float64),
        num_classes,
        IGNORE,
        *_coarse_cells(grid, coarse_grids),
    )


@lru_cache(maxsize=16)
def _coarse_cells(fine: Grid, coarse_grids: tuple[Grid, ...]) -> tuple[np.ndarray, int]:
    """Per coarse level, the coarse bit each fine cell pools into (fine cell (i, j) falls in
    coarse cell (i * ch // gh, j * cw // gw)), with levels concatenated; and the total bits."""
    gh, gw = fine
    i, j = np.divmod(np.arange(gh * gw), gw)
    out, start = [], 0
    for ch, cw in coarse_grids:
        out.append(start + (i * ch // gh) * cw + j * cw // gw)
        start += ch * cw
    return np.stack(out).astype(np.int64), start
