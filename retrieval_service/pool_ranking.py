"""Compiled CPU ranking of candidate pools: every component of one class in one call.

``fast`` mode hands each query component a pool of FAISS candidates (~500-2000 rows). Ranking
one pool with numpy/torch costs ~20 small array calls, whose fixed overhead dominates at ~30
components per layout. This numba kernel ranks all pools of a class in one call: first a
grid-box bound for every candidate from one small summary row each, then one pass in pool
order computing the exact mask IoU with a per-block bound on the context IoU, and the exact
context IoU only for candidates whose bounds still reach the running k-th best score.
Integers are counted exactly and divided in float64 by :func:`~retrieval_service.iou.iou_scalar`,
so scores are bit-identical to the reference.

Only the CPU uses it; on CUDA the torch path in the engine runs instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from retrieval_service.iou import iou_scalar

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


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


@numba.njit(cache=True, nogil=True)
def _rank_pools(
    mask: np.ndarray,  # (n, words) uint64
    summary: np.ndarray,  # (n, SUMMARY_WIDTH) int32
    context: np.ndarray,  # (n, width) uint8
    blocks: np.ndarray,  # (n, nb) uint8
    seg_ids: np.ndarray,  # (n,) int64
    pools: np.ndarray,  # concatenated row positions
    starts: np.ndarray,  # (q + 1,) pool offsets
    q_mask: np.ndarray,  # (q, words) uint64
    q_summary: np.ndarray,  # (q, SUMMARY_WIDTH) int32
    q_context: np.ndarray,  # (q, width) uint8
    q_blocks: np.ndarray,  # (q, nb) uint8
    q_cols: np.ndarray,  # concatenated present context cells
    col_starts: np.ndarray,  # (q + 1,)
    k: int,
    out_pos: np.ndarray,  # (q, k) int64, -1 = empty
    out: np.ndarray,  # (q, k, 3) float64: score, mask IoU, context IoU
) -> int:
    scored = 0
    words = mask.shape[1]
    width = context.shape[1]
    nb = blocks.shape[1]
    bound = np.empty(np.max(np.diff(starts)) if starts.size > 1 else 0)
    for j in range(starts.size - 1):
        pool = pools[starts[j] : starts[j + 1]]
        qs = q_summary[j]
        a = float(qs[0])
        ca = qs[1]
        cols = q_cols[col_starts[j] : col_starts[j + 1]]
        dense = cols.size * 8 > width
        filled = 0
        t = -np.inf
        top_pos = out_pos[j]
        top = out[j]
        # (1) A bound from each candidate's summary row alone: intersections are capped by the
        # smaller set and by the overlap of the grid boxes. A tight loop with no early exits, so
        # the random summary reads overlap (3x faster than checking them one by one below).
        for i in range(pool.size):
            s = summary[pool[i]]
            b = float(s[0])
            cb = s[1]
            im = min(min(qs[0], s[0]), _overlap(s, qs, 2))
            ic = min(min(ca, cb), _overlap(s, qs, 6))
            bound[i] = iou_scalar(float(im), a, b) + iou_scalar(float(ic), float(ca), float(cb))
        # (2) One pass in pool order (FAISS's nearest first, so the floor t rises early). Each
        # candidate is dropped at the first bound below t, most of them before their 0.3-3 kB
        # of codes are read.
        for i in range(pool.size):
            if bound[i] < t:
                continue
            r = pool[i]
            b = float(summary[r, 0])
            cb = summary[r, 1]
            # (3) Exact mask IoU, then per-block caps on the context.
            inter = 0
            for w in range(words):
                inter += _popcount(mask[r, w] & q_mask[j, w])
            miou = iou_scalar(float(inter), a, b)
            cap = 0
            for blk in range(nb):
                cap += min(blocks[r, blk], q_blocks[j, blk])
            if miou + iou_scalar(float(min(cap, min(ca, cb))), float(ca), float(cb)) < t:
                continue
            inter = 0
            if dense:  # whole rows: a contiguous loop the compiler vectorizes
                for c in range(width):
                    inter += context[r, c] == q_context[j, c]
            else:  # only the query's present cells
                for c in cols:
                    if context[r, c] == q_context[j, c]:
                        inter += 1
            ciou = iou_scalar(float(inter), float(ca), float(cb))
            score = miou + ciou
            scored += 1
            # Insert into the top-k, ordered by score descending then segment id ascending.
            slot = filled
            while slot > 0:
                p = slot - 1
                ps = top[p, 0]
                if ps > score or (ps == score and seg_ids[top_pos[p]] < seg_ids[r]):
                    break
                slot -= 1
            if slot >= k:
                continue
            last = min(filled, k - 1)
            for m in range(last, slot, -1):
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
    return scored


@dataclass(frozen=True)
class RankedPools:
    """Top-k of each query's pool: shard row positions (-1 = none) and (score, mask, context)."""

    positions: np.ndarray  # (q, k) int64
    scores: np.ndarray  # (q, k, 3) float64
    scored: int


def rank_pools(
    *,
    mask: np.ndarray,
    summary: np.ndarray,
    context: np.ndarray,
    blocks: np.ndarray,
    segment_ids: np.ndarray,
    pools: list[np.ndarray],
    query_mask: np.ndarray,
    query_summary: np.ndarray,
    query_context: np.ndarray,
    query_blocks: np.ndarray,
    query_cols: list[np.ndarray],
    k: int,
) -> RankedPools:
    """Exact top-k of each query component within its candidate pool (see the module docstring).

    ``mask``/``query_mask`` are packed bits as (rows, words) int64 or uint64; contexts are
    (rows, width) uint8 with absent query cells set to a value no bank cell holds;
    ``summary``/``query_summary`` are (rows, 10) int32 rows from
    :func:`~retrieval_service.index.pruning_summary` (popcounts and grid boxes).
    """
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
    scored = _rank_pools(
        np.ascontiguousarray(mask).view(np.uint64),
        np.ascontiguousarray(summary, np.int32),
        np.ascontiguousarray(context),
        np.ascontiguousarray(blocks),
        np.asarray(segment_ids, np.int64),
        flat,
        starts,
        np.ascontiguousarray(query_mask).view(np.uint64),
        np.ascontiguousarray(query_summary, np.int32),
        np.ascontiguousarray(query_context),
        np.ascontiguousarray(query_blocks),
        cols,
        col_starts,
        k,
        positions,
        scores,
    )
    return RankedPools(positions, scores, int(scored))


def compile_rank_pools() -> None:
    """Compile (or load from numba's cache) the kernel, so the first query does not pay for it."""
    words = np.zeros((1, 1), np.int64)
    ctx = np.zeros((1, 8), np.uint8)
    one = np.ones(1, np.int64)
    summary = np.ones((1, 10), np.int32)
    rank_pools(
        mask=words,
        summary=summary,
        context=ctx,
        blocks=np.zeros((1, 1), np.uint8),
        segment_ids=one,
        pools=[np.zeros(1, np.int64)],
        query_mask=words,
        query_summary=summary,
        query_context=ctx,
        query_blocks=np.zeros((1, 1), np.uint8),
        query_cols=[np.zeros(1, np.int64)],
        k=1,
    )
