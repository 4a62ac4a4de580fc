"""Grid codes of segments: what retrieval scores.

Per segment, at the *fine* grid:
- ``mask``: packed bits, 1 where at least half of a cell's pixels are the segment (the best
  covered cell is always set, so no segment codes to nothing);
- ``context``: one byte per cell. The segment's own mask cells hold its class; other cells
  whose centre lies in the context box hold the majority label of the whole cell
  (:data:`~memory_bank.classes.IGNORE` where unlabelled pixels win); the rest hold IGNORE.
  A context is therefore never empty, so a segment always scores 2.0 against itself.

For FAISS, one packed *coarse* code: for each grid of ``coarse_grids`` in turn, the fine mask
bits OR-pooled to that grid (fine cell ``(i, j)`` falls in coarse cell ``(i * ch // gh,
j * cw // gw)``). OR-pooling keeps small segments visible and the two levels break the ties
one level leaves, so Hamming order tracks the fine score well.

Bits are packed big-endian (``numpy.packbits``), cells in row-major order,
and every row is zero-padded to a multiple of 8 bytes so it can be read as uint64 words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory_bank.classes import IGNORE
from memory_bank.code_kernel import fine_cells
from memory_bank.config import Grid, SegmentConfig
from memory_bank.grid import cell_centers, cell_index, cell_pixel_counts, label_counts
from memory_bank.segments import Segments


def code_bytes(bits: int) -> int:
    """Bytes per packed code of ``bits`` bits, padded to whole uint64 words."""
    return -(-bits // 64) * 8


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack (n, nbits) bools into (n, code_bytes(nbits)) uint8, zero padded."""
    n, nbits = bits.shape
    out = np.zeros((n, code_bytes(nbits)), np.uint8)
    out[:, : -(-nbits // 8)] = np.packbits(bits, axis=1)
    return out


def unpack_bits(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (n, nbytes) uint8 to (n, nbits) bool."""
    return np.unpackbits(codes, axis=1, count=nbits).astype(bool)


def popcount(codes: np.ndarray) -> np.ndarray:
    """Number of set bits in each row of a packed (n, nbytes) uint8 array."""
    return np.bitwise_count(codes).sum(axis=1, dtype=np.int32)


@dataclass(frozen=True)
class SegmentCodes:
    """Codes of ``n`` segments; see the module docstring for the layout."""

    mask: np.ndarray  # (n, fine_bytes) uint8
    context: np.ndarray  # (n, gh * gw) uint8
    coarse: np.ndarray  # (n, coarse_bytes) uint8
    mask_popcount: np.ndarray  # (n,) int32
    context_popcount: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def label_grid(label: np.ndarray, num_classes: int, grid: Grid) -> np.ndarray:
    """(gh * gw,) uint8 majority label per cell; IGNORE where unlabelled pixels win.

    Ties go to the lowest class id, with IGNORE ranked last.
    """
    idx = cell_index(label.shape, grid)
    values = np.where(label == IGNORE, num_classes, label)
    counts = label_counts(idx, grid[0] * grid[1], values, num_classes + 1)
    mode = counts.argmax(axis=1)
    return np.where(mode == num_classes, IGNORE, mode).astype(np.uint8)


def mask_cells(segments: Segments, grid: Grid) -> np.ndarray:
    """(n, gh * gw) bool: cells at least half covered by each segment, never empty."""
    n = len(segments)
    cells = grid[0] * grid[1]
    idx = cell_index(segments.frame, grid)
    counts = label_counts(idx, cells, segments.component_map, n + 1)[:, 1:].T  # (n, cells)
    size = cell_pixel_counts(segments.frame, grid)
    bits = 2 * counts >= size[None, :]
    # The best covered cell always counts, so tiny segments still have a footprint.
    best = (counts / size[None, :]).argmax(axis=1)
    bits[np.arange(n), best] = True
    return bits


def box_cells(boxes: np.ndarray, frame: tuple[int, int], grid: Grid) -> np.ndarray:
    """(n, gh * gw) bool: cells whose centre lies inside each ``[y0, x0, y1, x1)`` box."""
    cy, cx = cell_centers(frame, grid)
    boxes = np.asarray(boxes).reshape(-1, 4)
    iny = (cy[None, :] >= boxes[:, 0:1]) & (cy[None, :] < boxes[:, 2:3])
    inx = (cx[None, :] >= boxes[:, 1:2]) & (cx[None, :] < boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).reshape(len(boxes), len(cy) * len(cx))


def encode_segments(label: np.ndarray, segments: Segments, num_classes: int, config: SegmentConfig) -> SegmentCodes:
    """Compute the fine and coarse codes of every segment of one label map."""
    # One compiled pass computes what mask_cells, box_cells, label_grid and coarse_code define
    # (tests hold it to them); the numpy definitions stay as the readable specification.
    fine_mask, context, coarse = fine_cells(
        label,
        segments.component_map,
        segments.class_id,
        segments.context_box,
        num_classes,
        config.fine_grid,
        config.coarse_grids,
    )
    return SegmentCodes(
        mask=pack_bits(fine_mask),
        context=context,
        coarse=pack_bits(coarse),
        mask_popcount=fine_mask.sum(axis=1, dtype=np.int32),
        context_popcount=(context != IGNORE).sum(axis=1, dtype=np.int32),
    )


def pool_cells(cells: np.ndarray, fine: Grid, coarse: Grid) -> np.ndarray:
    """OR-pool (n, gh * gw) bool rows on the fine grid to (n, ch * cw) on a coarse grid."""
    (gh, gw), (ch, cw) = fine, coarse
    # Fine rows map to coarse rows monotonically, so each coarse row is a contiguous run.
    row_starts = np.flatnonzero(np.diff(np.arange(gh) * ch // gh, prepend=-1))
    col_starts = np.flatnonzero(np.diff(np.arange(gw) * cw // gw, prepend=-1))
    grid = cells.reshape(-1, gh, gw)
    if grid.shape[0] == 0:
        return np.zeros((0, ch * cw), bool)
    pooled = np.logical_or.reduceat(np.logical_or.reduceat(grid, row_starts, axis=1), col_starts, axis=2)
    return pooled.reshape(-1, ch * cw)


def coarse_code(fine_mask: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """Packed coarse codes from (n, fine cells) bool mask rows: every level of the pyramid."""
    levels = [pool_cells(fine_mask, config.fine_grid, g) for g in config.coarse_grids]
    return pack_bits(np.concatenate(levels, axis=1))


def fine_bits(config: SegmentConfig) -> int:
    """Bits in a fine mask code (before padding)."""
    return config.fine_grid[0] * config.fine_grid[1]


def coarse_bits(config: SegmentConfig) -> int:
    """Bits in a coarse code (before padding): the cells of every coarse grid."""
    return sum(g[0] * g[1] for g in config.coarse_grids)
