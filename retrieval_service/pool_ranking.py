"""Compiled CPU ranking of candidates: every component of one class in one call.

``fast`` mode hands each query component a pool of FAISS candidates (~500-2000 rows); ``exact``
mode hands it a few FAISS seeds plus a *window* of shard rows (a contiguous range, the
popcount window of BitBound) that must all be considered. Ranking with numpy/torch costs ~20
small array calls per component, whose fixed overhead dominates at ~30 components per layout, so
this numba kernel ranks every component of a class in one call:

1. a grid-box bound for every pool candidate from one small summary row each (popcounts and the
   grid boxes of mask and context), in a tight loop so the random reads overlap;
2. one pass over the pool in its order (FAISS's nearest first, so the floor ``t`` on the k-th
   best rises early), then over the window (BitBound's outwards from the query's popcount,
   narrowed as ``t`` rises): a candidate whose summary bound is below ``t`` is skipped; the rest
   get the exact mask IoU and a per-block bound on the context; the exact context IoU is
   counted only where that still reaches ``t``.

Contexts are boxed (:class:`~memory_bank.context_codes.BoxedContexts`): a candidate's cells are
read only inside the overlap of its grid box with the query's, since every cell outside either
box can never match. Integers are counted exactly and divided in float64 by
:func:`~retrieval_service.iou.iou_scalar`, so scores are bit-identical to the reference. Only the
CPU uses it; on CUDA the torch path in the engine runs instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from memory_bank.context_codes import BoxedContexts
from retrieval_service.iou import iou_scalar

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


class _Rows(NamedTuple):
    """The shard's rows as the kernel reads them (one tuple, so every helper takes the same one)."""

    mask: np.ndarray  # (n, words) uint64
    summary: np.ndarray  # (n, SUMMARY_WIDTH) int32
    columns: np.ndarray  # (SUMMARY_WIDTH, n) int16 or int32, the summary by column (for windows)
    cells: np.ndarray  # boxed context cells, concatenated
    offsets: np.ndarray  # (n + 1,) int64 start of each row's cells
    blocks: np.ndarray  # (n, nb) uint8
    seg_ids: np.ndarray  # (n,) int64
    allowed: np.ndarray  # (n,) bool, or empty = every row (windows only)


class _Query(NamedTuple):
    """One query component as the kernel reads it, and its top-k so far (written in place)."""

    mask: np.ndarray  # (words,) uint64
    summary: np.ndarray  # (SUMMARY_WIDTH,) int32
    context: np.ndarray  # (width,) uint8, absent cells NO_MATCH
    blocks: np.ndarray  # (nb,) uint8
    cols: np.ndarray  # its present context cells
    gw: int  # grid width
    top_pos: np.ndarray  # (k,) int64 shard rows, -1 = empty
    top: np.ndarray  # (k, 3) float64: score, mask IoU, context IoU


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return int((x * _H01) >> np.uint64(56))


@numba.njit(cache=True, nogil=True, inline="always")
def _overlap(s: np.ndarray, qs: np.ndarray, at: int) -> int:
    """Cells shared by the grid boxes starting at column ``at`` of two summary rows."""
    dy = min(s[at + 2], qs[at + 2]) - max(s[at], qs[at])
    dx = min(s[at + 3], qs[at + 3]) - max(s[at + 1], qs[at + 1])
    return max(dy, 0) * max(dx, 0)


@numba.njit(cache=True, nogil=True, inline="always")
def _summary_bound(s: np.ndarray, qs: np.ndarray) -> float:
    """Upper bound of the score from two summary rows: each intersection is at most the smaller
    set and the overlap of the two grid boxes."""
    im = min(min(qs[0], s[0]), _overlap(s, qs, 2))
    ic = min(min(qs[1], s[1]), _overlap(s, qs, 6))
    return iou_scalar(float(im), float(qs[0]), float(s[0])) + iou_scalar(float(ic), float(qs[1]), float(s[1]))


@numba.njit(cache=True, nogil=True, inline="always")
def _context_inter(
    cells: np.ndarray, start: int, s: np.ndarray, q_context: np.ndarray, qs: np.ndarray, cols: np.ndarray, gw: int
) -> int:
    """Cells where a boxed bank context (its cells from ``start``, its box in summary columns 6-9)
    equals the query's dense context row. Only the overlap of the two boxes can match; it is
    walked row by row, or the query's present cells are looked up when those are fewer."""
    r0, c0, r1, c1 = s[6], s[7], s[8], s[9]
    y0, y1 = max(r0, qs[6]), min(r1, qs[8])
    x0, x1 = max(c0, qs[7]), min(c1, qs[9])
    if y1 <= y0 or x1 <= x0:
        return 0
    w = c1 - c0
    inter = 0
    if (y1 - y0) * (x1 - x0) <= 2 * cols.size:
        for y in range(y0, y1):
            base = start + (y - r0) * w - c0
            row = y * gw
            for x in range(x0, x1):
                inter += cells[base + x] == q_context[row + x]
    else:
        for c in cols:
            y = c // gw
            x = c - y * gw
            if r0 <= y < r1 and c0 <= x < c1 and cells[start + (y - r0) * w + (x - c0)] == q_context[c]:
                inter += 1
    return inter


@numba.njit(cache=True, nogil=True, inline="always")
def _consider(r: int, t: float, filled: int, k: int, rows: _Rows, query: _Query) -> tuple[float, int, int]:
    """Score row ``r`` if its bounds reach ``t``, insert it into the top-k; returns (t, filled, scored)."""
    mask, blocks, seg_ids = rows.mask, rows.blocks, rows.seg_ids
    q_mask, qs, q_blocks = query.mask, query.summary, query.blocks
    top_pos, top = query.top_pos, query.top
    s = rows.summary[r]
    a, b = float(qs[0]), float(s[0])
    ca, cb = float(qs[1]), float(s[1])
    inter = 0
    for w in range(mask.shape[1]):
        inter += _popcount(mask[r, w] & q_mask[w])
    miou = iou_scalar(float(inter), a, b)
    cap = 0
    for blk in range(blocks.shape[1]):
        cap += min(blocks[r, blk], q_blocks[blk])
    if miou + iou_scalar(float(min(cap, min(qs[1], s[1]))), ca, cb) < t:
        return t, filled, 0
    c_inter = _context_inter(rows.cells, rows.offsets[r], s, query.context, qs, query.cols, query.gw)
    ciou = iou_scalar(float(c_inter), ca, cb)
    score = miou + ciou
    # Insert into the top-k, ordered by score descending then segment id ascending.
    slot = filled
    while slot > 0:
        p = slot - 1
        ps = top[p, 0]
        if ps > score or (ps == score and seg_ids[top_pos[p]] < seg_ids[r]):
            break
        slot -= 1
    if slot >= k:
        return t, filled, 1
    for m in range(min(filled, k - 1), slot, -1):
        top_pos[m] = top_pos[m - 1]
        top[m, 0] = top[m - 1, 0]
        top[m, 1] = top[m - 1, 1]
        top[m, 2] = top[m - 1, 2]
    top_pos[slot] = r
    top[slot, 0] = score
    top[slot, 1] = miou
    top[slot, 2] = ciou
    filled = min(filled + 1, k)
    if filled == k:
        t = top[k - 1, 0]
    return t, filled, 1


#: Rows of a window bounded at once.
_WINDOW_CHUNK = 1024


@numba.njit(cache=True, nogil=True, inline="always")
def _bitbound_limits(mask_pop: np.ndarray, a: int, t: float, lo: int, hi: int) -> tuple[int, int]:
    """Rows ``lo..hi`` narrowed to those BitBound leaves for floor ``t``: context IoU <= 1, so a
    row can reach ``t`` only if min(a, b) / max(a, b) >= t - 1, a contiguous range of the
    ascending popcounts."""
    ratio = t - 1.0
    if ratio <= 0:
        return lo, hi
    new_lo = np.searchsorted(mask_pop, int(np.floor(a * ratio)) - 1, side="left")
    new_hi = np.searchsorted(mask_pop, int(np.ceil(a / ratio)) + 1, side="right")
    return max(lo, new_lo), min(hi, new_hi)


@numba.njit(cache=True, nogil=True, inline="always")
def _window_chunk(
    base: int,
    end: int,
    t: float,
    filled: int,
    k: int,
    window_pass: np.ndarray,
    in_pool: np.ndarray,
    rows: _Rows,
    query: _Query,
) -> tuple[float, int, int]:
    """Rows ``base..end`` of a window: bounds from the summary's columns (a loop the compiler
    vectorises), then the rows that reach ``t``. Returns (t, filled, scored).

    The bound ``im / d1 + ic / d2 >= t`` is tested as ``im * d2 + ic * d1 >= t * d1 * d2``
    (integers exact, no division: twice as fast) against ``t`` lowered by a relative 1e-9, far
    above the rounding of two products: it lets through every row the divided form would, and
    the rows it lets through are bounded again exactly by :func:`_consider`."""
    columns, allowed, qs = rows.columns, rows.allowed, query.summary
    a, ca = qs[0], qs[1]
    low_t = t * (1.0 - 1e-9) if t > 0 else t
    for r in range(base, end):
        b, cb = columns[0, r], columns[1, r]
        dy = min(columns[4, r], qs[4]) - max(columns[2, r], qs[2])
        dx = min(columns[5, r], qs[5]) - max(columns[3, r], qs[3])
        im = min(min(a, b), max(dy, 0) * max(dx, 0))
        dy = min(columns[8, r], qs[8]) - max(columns[6, r], qs[6])
        dx = min(columns[9, r], qs[9]) - max(columns[7, r], qs[7])
        ic = min(min(ca, cb), max(dy, 0) * max(dx, 0))
        # Unions are never empty: masks and contexts have at least one cell.
        d1, d2 = a + b - im, ca + cb - ic
        window_pass[r - base] = float(im * d2 + ic * d1) >= low_t * float(d1) * float(d2)
    scored = 0
    check_allowed = allowed.size > 0
    for r in range(base, end):
        if not window_pass[r - base] or in_pool[r] or (check_allowed and not allowed[r]):
            continue
        t, filled, n = _consider(r, t, filled, k, rows, query)
        scored += n
    return t, filled, scored


@numba.njit(cache=True, nogil=True)
def _rank(
    mask: np.ndarray,  # (n, words) uint64
    summary: np.ndarray,  # (n, SUMMARY_WIDTH) int32
    columns: np.ndarray,  # (SUMMARY_WIDTH, n) int16 or int32, the summary by column (for windows)
    cells: np.ndarray,  # boxed context cells, concatenated
    offsets: np.ndarray,  # (n + 1,) int64 start of each row's cells
    blocks: np.ndarray,  # (n, nb) uint8
    seg_ids: np.ndarray,  # (n,) int64
    allowed: np.ndarray,  # (n,) bool, or empty = every row
    pools: np.ndarray,  # concatenated row positions
    starts: np.ndarray,  # (q + 1,) pool offsets
    windows: np.ndarray,  # (q, 2) int64 row ranges [lo, hi) considered after the pool
    mask_pop: np.ndarray,  # (n,) int64 ascending, for bitbound (else empty)
    bitbound: bool,  # the window is BitBound's for the floor after the pool (windows ignored)
    q_mask: np.ndarray,  # (q, words) uint64
    q_summary: np.ndarray,  # (q, SUMMARY_WIDTH) int32
    q_context: np.ndarray,  # (q, width) uint8, absent cells NO_MATCH
    q_blocks: np.ndarray,  # (q, nb) uint8
    q_cols: np.ndarray,  # concatenated present context cells
    col_starts: np.ndarray,  # (q + 1,)
    gw: int,
    k: int,
    out_pos: np.ndarray,  # (q, k) int64, -1 = empty
    out: np.ndarray,  # (q, k, 3) float64: score, mask IoU, context IoU
) -> int:
    rows = _Rows(mask, summary, columns, cells, offsets, blocks, seg_ids, allowed)
    scored = 0
    bound = np.empty(np.max(np.diff(starts)) if starts.size > 1 else 0)
    window_pass = np.empty(_WINDOW_CHUNK, np.bool_)
    in_pool = np.zeros(mask.shape[0], np.bool_)  # rows of the current pool, skipped in the window
    for j in range(starts.size - 1):
        pool = pools[starts[j] : starts[j + 1]]
        qs = q_summary[j]
        cols = q_cols[col_starts[j] : col_starts[j + 1]]
        query = _Query(q_mask[j], qs, q_context[j], q_blocks[j], cols, gw, out_pos[j], out[j])
        filled = 0
        t = -np.inf
        # (1) The pool: summary bounds in a tight loop first (the random reads overlap), then
        # each candidate in pool order, dropped at its first bound below t.
        for i in range(pool.size):
            bound[i] = _summary_bound(summary[pool[i]], qs)
        for i in range(pool.size):
            if bound[i] < t:
                continue
            t, filled, n = _consider(pool[i], t, filled, k, rows, query)
            scored += n
        # (2) The window, skipping the pool's rows (already considered) and rows of excluded
        # images. Given windows are walked in row order. BitBound's window is walked outwards
        # from the query's own popcount, where scores are highest, so t rises early, and both
        # ends are narrowed again each time it does.
        for i in range(pool.size):
            in_pool[pool[i]] = True
        if not bitbound:
            for base in range(windows[j, 0], windows[j, 1], _WINDOW_CHUNK):
                end = min(base + _WINDOW_CHUNK, windows[j, 1])
                t, filled, n = _window_chunk(base, end, t, filled, k, window_pass, in_pool, rows, query)
                scored += n
        else:
            lo, hi = 0, mask_pop.size
            if filled == k:
                lo, hi = _bitbound_limits(mask_pop, qs[0], t, lo, hi)
            mid = min(max(np.searchsorted(mask_pop, qs[0], side="left"), lo), hi)
            up, down = mid, mid  # rows up..hi are left above, lo..down below
            while up < hi or down > lo:
                if up < hi:
                    end = min(up + _WINDOW_CHUNK, hi)
                    t, filled, n = _window_chunk(up, end, t, filled, k, window_pass, in_pool, rows, query)
                    scored += n
                    up = end
                if down > lo:
                    base = max(down - _WINDOW_CHUNK, lo)
                    t, filled, n = _window_chunk(base, down, t, filled, k, window_pass, in_pool, rows, query)
                    scored += n
                    down = base
                if filled == k:
                    lo, hi = _bitbound_limits(mask_pop, qs[0], t, lo, hi)
        for i in range(pool.size):
            in_pool[pool[i]] = False
    return scored


@dataclass(frozen=True)
class RankedPools:
    """Top-k of each query: shard row positions (-1 = none) and (score, mask IoU, context IoU)."""

    positions: np.ndarray  # (q, k) int64
    scores: np.ndarray  # (q, k, 3) float64
    scored: int


def rank_pools(
    *,
    mask: np.ndarray,
    summary: np.ndarray,
    contexts: BoxedContexts,
    blocks: np.ndarray,
    segment_ids: np.ndarray,
    pools: list[np.ndarray],
    query_mask: np.ndarray,
    query_summary: np.ndarray,
    query_context: np.ndarray,
    query_blocks: np.ndarray,
    query_cols: list[np.ndarray],
    k: int,
    windows: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    mask_pop: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> RankedPools:
    """Exact top-k of each query component over its pool and then its window (see the module docstring).

    ``mask``/``query_mask`` are packed bits as (rows, words) int64 or uint64; ``contexts`` are the
    shard rows' boxed contexts, whose boxes must equal the context boxes in ``summary`` (columns
    6-9); ``query_context`` rows are dense with absent cells set to a value no bank cell holds;
    ``summary``/``query_summary`` are (rows, 10) int32 rows from
    :func:`~retrieval_service.index.pruning_summary`. ``windows`` (q, 2) adds the rows
    ``lo..hi-1`` of each query (default none). With ``mask_pop`` (the rows' ascending mask
    popcounts) instead, each query's window is every row that BitBound cannot rule out once the
    pool has set the floor: the whole class is covered, so the top-k is exact over it.
    ``allowed`` (n,) bool limits the windows to some rows (pools are taken as given).
    ``columns`` is ``summary`` by column, (10, n) contiguous (made here when not given).
    """
    if windows is not None and mask_pop is not None:
        raise ValueError("pass windows or mask_pop, not both")
    q = len(pools)
    if len(query_cols) != q or query_mask.shape[0] != q:
        raise ValueError(f"{q} pools but {query_mask.shape[0]} query rows and {len(query_cols)} column lists")
    starts = np.zeros(q + 1, np.int64)
    starts[1:] = np.cumsum([p.size for p in pools])
    col_starts = np.zeros(q + 1, np.int64)
    col_starts[1:] = np.cumsum([c.size for c in query_cols])
    positions = np.full((q, k), -1, np.int64)
    scores = np.full((q, k, 3), -np.inf)
    flat = np.concatenate(pools).astype(np.int64) if q else np.zeros(0, np.int64)
    cols = np.concatenate(query_cols).astype(np.int64) if q else np.zeros(0, np.int64)
    scored = _rank(
        np.ascontiguousarray(mask).view(np.uint64),
        np.ascontiguousarray(summary, np.int32),
        np.ascontiguousarray(summary.T, np.int32) if columns is None else columns,
        contexts.data,
        contexts.offsets,
        np.ascontiguousarray(blocks),
        np.asarray(segment_ids, np.int64),
        np.zeros(0, bool) if allowed is None else np.ascontiguousarray(allowed, bool),
        flat,
        starts,
        np.zeros((q, 2), np.int64) if windows is None else np.ascontiguousarray(windows, np.int64),
        np.zeros(0, np.int64) if mask_pop is None else np.ascontiguousarray(mask_pop, np.int64),
        mask_pop is not None,
        np.ascontiguousarray(query_mask).view(np.uint64),
        np.ascontiguousarray(query_summary, np.int32),
        np.ascontiguousarray(query_context),
        np.ascontiguousarray(query_blocks),
        cols,
        col_starts,
        contexts.grid[1],
        k,
        positions,
        scores,
    )
    return RankedPools(positions, scores, int(scored))


def compile_rank_pools() -> None:
    """Compile (or load from numba's cache) the kernel, for both dtypes of the summary's columns,
    so the first query does not pay for it."""
    words = np.zeros((1, 1), np.int64)
    summary = np.array([[1, 1, 0, 0, 1, 1, 0, 0, 1, 1]], np.int32)
    contexts = BoxedContexts(np.array([[0, 0, 1, 1]], np.int16), np.zeros(1, np.uint8), (1, 8))
    for dtype in (np.int16, np.int32):
        rank_pools(
            mask=words,
            summary=summary,
            contexts=contexts,
            blocks=np.zeros((1, 1), np.uint8),
            segment_ids=np.ones(1, np.int64),
            pools=[np.zeros(1, np.int64)],
            query_mask=words,
            query_summary=summary,
            query_context=np.zeros((1, 8), np.uint8),
            query_blocks=np.zeros((1, 1), np.uint8),
            query_cols=[np.zeros(1, np.int64)],
            k=1,
            windows=np.array([[0, 1]], np.int64),
            columns=np.ascontiguousarray(summary.T, dtype),
        )
