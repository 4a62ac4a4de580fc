"""The in-memory retrieval index: a bank's codes split by class, with pruning metadata.

Each class shard keeps its segments sorted by mask popcount, so that the popcount bound
(BitBound) turns into a contiguous window, plus the grid bounding boxes of each segment's
mask cells and context cells, for spatial bounds. Mask rows live in a torch tensor on the
chosen device (CUDA when available); contexts are kept inside their grid boxes
(:class:`~memory_bank.context_codes.BoxedContexts`, about a tenth of the dense rows) on the host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from memory_bank import Bank, SegmentConfig
from memory_bank.candidate_index import shard_order
from memory_bank.classes import IGNORE
from memory_bank.context_codes import BoxedContexts, grid_boxes

log = logging.getLogger(__name__)

#: Rows processed at once while deriving metadata (bounds memory to ~200 MB at 45x60).
_CHUNK = 65536


def default_device() -> torch.device:
    """CUDA when torch sees a GPU (unverified here: no GPU on our machines), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ClassShard:
    """All segments of one class, sorted by mask popcount."""

    class_id: int
    segment_ids: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) int32
    mask_pop: np.ndarray  # (n,) int64, ascending
    context_pop: np.ndarray  # (n,) a view of columns[1]
    mask_box: np.ndarray  # (4, n) grid box [r0, c0, r1, c1) of the mask cells, a view of columns[2:6]
    context_box: np.ndarray  # (4, n) grid box of the present context cells, a view of columns[6:10]
    mask: torch.Tensor  # (n, words) int64 packed mask bits
    context: BoxedContexts  # boxes = context_box (transposed)
    coarse: np.ndarray  # (n, coarse bytes) uint8, for FAISS
    context_blocks: np.ndarray  # (n, blocks) uint8: present context cells per block of BLOCK_GRID
    summary: np.ndarray  # (n, 10) int32: pruning_summary() of the rows above, one cache line each
    columns: np.ndarray  # (10, n) column_dtype(): the summary by column, for scans of row ranges (vectorised)
    extras: dict = field(default_factory=dict)  # per-shard caches (e.g. FAISS indexes)

    def __len__(self) -> int:
        return int(self.segment_ids.size)


@dataclass
class SegmentIndex:
    """Per-class shards of a bank, ready for the retrieval engine."""

    config: SegmentConfig
    resolution: tuple[int, int]
    num_classes: int
    shards: dict[int, ClassShard]
    device: torch.device
    version: str = ""
    build_seconds: float = 0.0

    @property
    def num_segments(self) -> int:
        return sum(len(s) for s in self.shards.values())

    def nbytes(self) -> int:
        """Bytes held by the index (codes and metadata)."""
        total = 0
        for s in self.shards.values():
            total += s.mask.element_size() * s.mask.nelement() + s.context.nbytes
            total += sum(a.nbytes for a in (s.segment_ids, s.image_ids, s.mask_pop, s.summary, s.columns))
            total += s.coarse.nbytes + s.context_blocks.nbytes  # context_pop and the boxes are views of columns
        return total

    @classmethod
    def from_bank(cls, bank: Bank, device: torch.device | None = None) -> SegmentIndex:
        """Load every code of a bank into memory, split by class."""
        codes = bank.codes
        return cls.from_arrays(
            class_id=bank.column("class_id"),
            image_id=bank.column("image_id"),
            mask=np.asarray(codes["mask"][:]),
            contexts=bank.context_codes(),
            coarse=np.asarray(codes["coarse"][:]),
            config=bank.config,
            resolution=bank.resolution,
            num_classes=len(bank.classes),
            device=device,
            version=bank.version,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        class_id: np.ndarray,
        image_id: np.ndarray,
        mask: np.ndarray,
        coarse: np.ndarray,
        config: SegmentConfig,
        resolution: tuple[int, int],
        num_classes: int,
        context: np.ndarray | None = None,
        contexts: BoxedContexts | None = None,
        segment_ids: np.ndarray | None = None,
        device: torch.device | None = None,
        version: str = "",
    ) -> SegmentIndex:
        """Build the index from code arrays (one row per segment, ids = row numbers by default);
        contexts as dense (S, cells) rows (``context``) or boxed (``contexts``)."""
        start = time.perf_counter()
        device = device or default_device()
        if contexts is None:
            if context is None:
                raise ValueError("pass the contexts, dense (context=) or boxed (contexts=)")
            contexts = BoxedContexts.from_rows(context, config.fine_grid)
        if segment_ids is None:
            segment_ids = np.arange(len(class_id), dtype=np.int64)
        class_id = np.asarray(class_id)
        shards = {}
        for c in np.unique(class_id):
            rows = np.flatnonzero(class_id == c)
            shards[int(c)] = _make_shard(
                int(c), rows, segment_ids, image_id, mask, contexts, coarse, config.fine_grid, device
            )
        index = cls(config, tuple(resolution), num_classes, shards, device, version)
        index.build_seconds = time.perf_counter() - start
        log.info(
            "retrieval index: %d segments in %d classes on %s, %.1f MB, built in %.2f s",
            index.num_segments,
            len(shards),
            device,
            index.nbytes() / 1e6,
            index.build_seconds,
        )
        return index


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK):
        yield slice(start, min(n, start + _CHUNK))


def block_grid_for(grid: tuple[int, int]) -> tuple[int, int]:
    """Blocks of about 5x5 fine cells (at most 255 cells each, so counts fit a byte)."""
    return max(1, round(grid[0] / 5)), max(1, round(grid[1] / 5))


def block_counts(cells: np.ndarray, grid: tuple[int, int], blocks: tuple[int, int]) -> np.ndarray:
    """(n, bh * bw) uint8: set cells of (n, gh * gw) bool rows in each block (fine cell (i, j)
    belongs to block (i * bh // gh, j * bw // gw))."""
    (gh, gw), (bh, bw) = grid, blocks
    row_starts = np.flatnonzero(np.diff(np.arange(gh) * bh // gh, prepend=-1))
    col_starts = np.flatnonzero(np.diff(np.arange(gw) * bw // gw, prepend=-1))
    x = cells.reshape(-1, gh, gw).astype(np.uint8)
    if x.shape[0] == 0:
        return np.zeros((0, bh * bw), np.uint8)
    summed = np.add.reduceat(np.add.reduceat(x, row_starts, axis=1), col_starts, axis=2)
    return summed.reshape(x.shape[0], -1).astype(np.uint8)


def pruning_summary(
    mask_pop: np.ndarray, context_pop: np.ndarray, mask_box: np.ndarray, context_box: np.ndarray
) -> np.ndarray:
    """(n, 10) int32 rows ``[mask_pop, context_pop, mask box (4), context box (4)]``.

    Everything the cheap bounds of the compiled ranking need, packed so that checking a
    candidate costs one cache line rather than six scattered reads.
    """
    return np.ascontiguousarray(
        np.concatenate([np.stack([mask_pop, context_pop]), mask_box, context_box]).T.astype(np.int32)
    )


def column_dtype(grid: tuple[int, int]) -> np.dtype:
    """Dtype of :attr:`ClassShard.columns`: int16 when every value and every box overlap (at most
    the grid's cells) fits, which halves the bytes a window scan reads and doubles its speed."""
    return np.dtype(np.int16 if grid[0] * grid[1] <= np.iinfo(np.int16).max else np.int32)


def _make_shard(
    class_id: int,
    rows: np.ndarray,
    segment_ids: np.ndarray,
    image_id: np.ndarray,
    mask: np.ndarray,
    contexts: BoxedContexts,
    coarse: np.ndarray,
    grid: tuple[int, int],
    device: torch.device,
) -> ClassShard:
    cells = grid[0] * grid[1]
    n = rows.size
    mask_pop = np.empty(n, np.int64)
    context_pop = np.empty(n, np.int64)
    mask_box = np.empty((4, n), np.int64)
    context_box = np.empty((4, n), np.int64)
    block_grid = block_grid_for(grid)
    blocks = np.empty((n, block_grid[0] * block_grid[1]), np.uint8)
    for sl in _chunks(n):
        m = np.asarray(mask[rows[sl]])
        c = contexts.rows(rows[sl])
        bits = np.unpackbits(m, axis=1, count=cells).astype(bool)
        present = c != IGNORE
        mask_pop[sl] = bits.sum(axis=1)
        context_pop[sl] = present.sum(axis=1)
        mask_box[:, sl] = grid_boxes(bits, grid)
        context_box[:, sl] = grid_boxes(present, grid)
        blocks[sl] = block_counts(present, grid, block_grid)
    order = shard_order(mask_pop)
    rows = rows[order]
    summary = pruning_summary(mask_pop[order], context_pop[order], mask_box[:, order], context_box[:, order])
    columns = np.ascontiguousarray(summary.T, column_dtype(grid))
    return ClassShard(
        class_id=class_id,
        segment_ids=np.asarray(segment_ids)[rows].astype(np.int64),
        image_ids=np.asarray(image_id)[rows].astype(np.int32),
        mask_pop=mask_pop[order],
        context_pop=columns[1],
        mask_box=columns[2:6],
        context_box=columns[6:10],
        mask=torch.from_numpy(np.ascontiguousarray(np.asarray(mask[rows])).view(np.int64)).to(device),
        context=contexts.take(rows),
        coarse=np.ascontiguousarray(np.asarray(coarse[rows])),
        context_blocks=blocks[order],
        summary=summary,
        columns=columns,
    )
