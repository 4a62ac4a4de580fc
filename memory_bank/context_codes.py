"""Context codes stored inside their grid boxes: the compact form of ``codes/context``.

A context code is one byte per fine cell, :data:`~memory_bank.classes.IGNORE` wherever the
segment has no context (docs/bank-format.md §6). Most of a frame is outside a segment's context
box, so a row of ``gh * gw`` bytes is mostly IGNORE: in the CamVid train bank a context's
present cells span 178 of the 2,700 cells on average. :class:`BoxedContexts` keeps, per
segment, only the cells of the *grid box* of its present cells (the smallest ``[r0, c0, r1,
c1)`` holding every cell that is not IGNORE), row-major, all rows concatenated; every cell
outside the box is IGNORE by construction, so :meth:`BoxedContexts.rows` gives back the exact
dense rows. Bank format v2 stores contexts this way, and the retrieval engine holds them so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from memory_bank.classes import IGNORE
from memory_bank.config import Grid

#: Dense rows boxed at once (177 MB at 45x60).
_CHUNK_ROWS = 65536


def grid_boxes(cells: np.ndarray, grid: Grid) -> np.ndarray:
    """(4, n) int64 boxes ``[r0, c0, r1, c1)`` of the set cells of (n, gh * gw) bool rows; empty -> 0s."""
    gh, gw = grid
    cells = cells.reshape(-1, gh, gw)
    rows, cols = cells.any(axis=2), cells.any(axis=1)
    has = rows.any(axis=1)
    r0 = rows.argmax(axis=1)
    r1 = gh - rows[:, ::-1].argmax(axis=1)
    c0 = cols.argmax(axis=1)
    c1 = gw - cols[:, ::-1].argmax(axis=1)
    return np.where(has[None, :], np.stack([r0, c0, r1, c1]), 0).astype(np.int64)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(n,) int64 cells of (n, 4) boxes."""
    b = np.asarray(boxes, np.int64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def offsets_of(boxes: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 start of each box's cells in the concatenated data (last = total)."""
    out = np.zeros(len(boxes) + 1, np.int64)
    np.cumsum(box_areas(boxes), out=out[1:])
    return out


@numba.njit(cache=True, nogil=True)
def _pack(rows: np.ndarray, boxes: np.ndarray, offsets: np.ndarray, gw: int, out: np.ndarray) -> None:
    for i in range(rows.shape[0]):
        r0, c0, r1, c1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        at = offsets[i]
        for r in range(r0, r1):
            for c in range(c0, c1):
                out[at] = rows[i, r * gw + c]
                at += 1


@numba.njit(cache=True, nogil=True)
def _unpack(
    data: np.ndarray, boxes: np.ndarray, offsets: np.ndarray, picks: np.ndarray, gw: int, out: np.ndarray
) -> None:
    for j in range(picks.size):
        i = picks[j]
        r0, c0, r1, c1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        at = offsets[i]
        for r in range(r0, r1):
            for c in range(c0, c1):
                out[j, r * gw + c] = data[at]
                at += 1


@numba.njit(cache=True, nogil=True)
def _gather(data: np.ndarray, offsets: np.ndarray, picks: np.ndarray, new_offsets: np.ndarray, out: np.ndarray) -> None:
    for j in range(picks.size):
        src = offsets[picks[j]]
        for m in range(new_offsets[j + 1] - new_offsets[j]):
            out[new_offsets[j] + m] = data[src + m]


@dataclass(frozen=True)
class BoxedContexts:
    """Context codes of ``n`` segments, each kept only inside its grid box.

    Attributes:
        boxes: (n, 4) int16 grid boxes ``[r0, c0, r1, c1)`` of the present cells.
        data: (sum of box areas,) uint8, each box's cells row-major, boxes in segment order.
        grid: the fine grid ``(gh, gw)``.
    """

    boxes: np.ndarray
    data: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (n, 4), got {self.boxes.shape}")
        if self.data.size != int(box_areas(self.boxes).sum()):
            raise ValueError(f"{self.data.size} context cells for boxes that hold {int(box_areas(self.boxes).sum())}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """(n + 1,) int64 start of each segment's cells in :attr:`data`."""
        if "_offsets" not in self.__dict__:
            object.__setattr__(self, "_offsets", offsets_of(self.boxes))
        return self.__dict__["_offsets"]

    @property
    def nbytes(self) -> int:
        """Bytes held: cells, boxes and offsets."""
        return int(self.data.nbytes + self.boxes.nbytes + self.offsets.nbytes)

    @classmethod
    def from_rows(cls, rows: np.ndarray, grid: Grid) -> BoxedContexts:
        """Box (n, gh * gw) uint8 dense context rows (read in chunks: they may be a memory map)."""
        if len(rows) > _CHUNK_ROWS:
            parts = [cls.from_rows(rows[i : i + _CHUNK_ROWS], grid) for i in range(0, len(rows), _CHUNK_ROWS)]
            return cls.concat(parts, grid)
        rows = np.ascontiguousarray(rows, np.uint8).reshape(-1, grid[0] * grid[1])
        boxes = np.ascontiguousarray(grid_boxes(rows != IGNORE, grid).T.astype(np.int16))
        offsets = offsets_of(boxes)
        data = np.empty(int(offsets[-1]), np.uint8)
        _pack(rows, boxes.astype(np.int64), offsets, grid[1], data)
        return cls(boxes, data, tuple(grid))  # type: ignore[arg-type]

    @classmethod
    def empty(cls, grid: Grid) -> BoxedContexts:
        return cls(np.zeros((0, 4), np.int16), np.zeros(0, np.uint8), tuple(grid))  # type: ignore[arg-type]

    @classmethod
    def concat(cls, parts: Sequence[BoxedContexts], grid: Grid) -> BoxedContexts:
        """The segments of ``parts`` in order."""
        if not parts:
            return cls.empty(grid)
        boxes = np.concatenate([p.boxes for p in parts]).astype(np.int16, copy=False)
        return cls(boxes, np.concatenate([p.data for p in parts]), tuple(grid))  # type: ignore[arg-type]

    def rows(self, picks: np.ndarray | None = None) -> np.ndarray:
        """Dense (len(picks), gh * gw) uint8 rows (all rows when ``picks`` is None), IGNORE outside the boxes."""
        picks = np.arange(len(self), dtype=np.int64) if picks is None else np.asarray(picks, np.int64).ravel()
        out = np.full((picks.size, self.grid[0] * self.grid[1]), IGNORE, np.uint8)
        _unpack(self.data, self.boxes.astype(np.int64), self.offsets, picks, self.grid[1], out)
        return out

    def take(self, picks: np.ndarray) -> BoxedContexts:
        """The segments at ``picks``, in that order."""
        picks = np.asarray(picks, np.int64).ravel()
        boxes = np.ascontiguousarray(self.boxes[picks])
        new_offsets = offsets_of(boxes)
        data = np.empty(int(new_offsets[-1]), np.uint8)
        _gather(self.data, self.offsets, picks, new_offsets, data)
        return BoxedContexts(boxes, data, self.grid)
