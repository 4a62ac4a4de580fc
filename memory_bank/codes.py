"""Grid codes of segments: what retrieval scores.

Per segment, at the *fine* grid:
- ``mask``: packed bits, 1 where at least half of a cell's pixels are the segment (the best
  covered cell is always set, so no segment codes to nothing);
- ``context``: one byte per cell. Cells "inside" the context box (their centre lies in the
  box, or the segment's own mask bit is set there) hold the majority label of the whole cell
  (:data:`~memory_bank.classes.IGNORE` where unlabelled pixels win); other cells hold IGNORE.

At the *coarse* grid, one packed code for FAISS: the coarse mask bits followed by the coarse
context-box bits. Bits are packed big-endian (``numpy.packbits``), cells in row-major order,
and every row is zero-padded to a multiple of 8 bytes so it can be read as uint64 words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory_bank.classes import IGNORE
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
    frame = segments.frame
    fine_mask = mask_cells(segments, config.fine_grid)
    # A segment's own cells are always part of its context, even if its box misses their centres.
    in_box = box_cells(segments.context_box, frame, config.fine_grid) | fine_mask
    grid_labels = label_grid(label, num_classes, config.fine_grid)
    context = np.where(in_box, grid_labels[None, :], IGNORE).astype(np.uint8)
    coarse_mask = mask_cells(segments, config.coarse_grid)
    coarse_box = box_cells(segments.context_box, frame, config.coarse_grid) | coarse_mask
    mask = pack_bits(fine_mask)
    return SegmentCodes(
        mask=mask,
        context=context,
        coarse=pack_bits(np.concatenate([coarse_mask, coarse_box], axis=1)),
        mask_popcount=fine_mask.sum(axis=1, dtype=np.int32),
        context_popcount=(context != IGNORE).sum(axis=1, dtype=np.int32),
    )


def fine_bits(config: SegmentConfig) -> int:
    """Bits in a fine mask code (before padding)."""
    return config.fine_grid[0] * config.fine_grid[1]


def coarse_bits(config: SegmentConfig) -> int:
    """Bits in a coarse code (before padding): coarse mask cells then coarse box cells."""
    return 2 * config.coarse_grid[0] * config.coarse_grid[1]
