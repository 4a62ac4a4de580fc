"""The compiled pool ranking equals a plain numpy ranking of the same pools."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank.context_codes import BoxedContexts
from retrieval_service.index import block_counts, grid_boxes, pruning_summary
from retrieval_service.iou import iou64
from retrieval_service.kernels import NO_MATCH
from retrieval_service.pool_ranking import RankedPools, rank_pools

GRID = (10, 16)
CELLS = GRID[0] * GRID[1]
BLOCKS = (2, 3)


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, GRID) bool: one random axis-aligned box per row."""
    r = np.sort(rng.integers(0, GRID[0] + 1, (n, 2)), axis=1)
    c = np.sort(rng.integers(0, GRID[1] + 1, (n, 2)), axis=1)
    rows, cols = np.arange(GRID[0]), np.arange(GRID[1])
    in_r = (rows >= r[:, :1]) & (rows < r[:, 1:])
    in_c = (cols >= c[:, :1]) & (cols < c[:, 1:])
    return in_r[:, :, None] & in_c[:, None, :]


def _codes(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Random masks and context label rows (255 = absent), each inside a random box, so that
    the grid-box bound has something to prune."""
    bits = (_boxes(rng, n) & (rng.random((n, *GRID)) < rng.uniform(0.3, 1.0, (n, 1, 1)))).reshape(n, CELLS)
    bits[np.arange(n), rng.integers(0, CELLS, n)] = True  # a mask is never empty
    ctx = rng.integers(0, classes, size=(n, CELLS)).astype(np.uint8)
    ctx[~_boxes(rng, n).reshape(n, CELLS) & ~bits] = 255
    return bits, ctx


def _summary(bits: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    present = ctx != 255
    return pruning_summary(bits.sum(1), present.sum(1), grid_boxes(bits, GRID), grid_boxes(present, GRID))


def _pack(bits: np.ndarray) -> np.ndarray:
    out = np.zeros((bits.shape[0], 24), np.uint8)  # 160 bits -> 3 words
    out[:, :20] = np.packbits(bits, axis=1)
    return out.view(np.int64)


def _reference(bits, ctx, qbits, qctx, seg_ids, j: int, rows: np.ndarray, k: int):
    """Score every row of ``rows`` for query ``j``; the top-k by score, then segment id, with their
    (score, mask IoU, context IoU) in the columns of the kernel's ``scores``."""
    miou = iou64((bits[rows] & qbits[j]).sum(1), qbits[j].sum(), bits[rows].sum(1))
    inter = ((ctx[rows] == qctx[j]) & (qctx[j] != 255)).sum(1)
    ciou = iou64(inter, (qctx[j] != 255).sum(), (ctx[rows] != 255).sum(1))
    score = miou + ciou
    order = np.lexsort((seg_ids[rows], -score))[:k]
    return rows[order], np.stack([score, miou, ciou], axis=1)[order]


def _rank(
    bits: np.ndarray,
    ctx: np.ndarray,
    qbits: np.ndarray,
    qctx: np.ndarray,
    seg_ids: np.ndarray,
    pools: list[np.ndarray],
    k: int,
    **window: np.ndarray,
) -> RankedPools:
    """The kernel on bool masks and dense contexts (255 = absent), as the engine would call it."""
    return rank_pools(
        mask=_pack(bits),
        summary=_summary(bits, ctx),
        contexts=BoxedContexts.from_rows(ctx, GRID),
        blocks=block_counts(ctx != 255, GRID, BLOCKS),
        segment_ids=seg_ids,
        pools=pools,
        query_mask=_pack(qbits),
        query_summary=_summary(qbits, qctx),
        query_context=np.where(qctx == 255, NO_MATCH, qctx).astype(np.uint8),
        query_blocks=block_counts(qctx != 255, GRID, BLOCKS),
        query_cols=[np.flatnonzero(r != 255) for r in qctx],
        k=k,
        **window,
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), q=st.integers(1, 6), k=st.integers(1, 8))
def test_rank_pools_matches_numpy(seed: int, n: int, q: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(1, 4))  # few classes: many exact score ties
    bits, ctx = _codes(rng, n, classes)
    qbits, qctx = _codes(rng, q, classes)
    seg_ids = rng.permutation(n * 3)[:n].astype(np.int64)
    pools = [rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False).astype(np.int64) for _ in range(q)]
    ranked = _rank(bits, ctx, qbits, qctx, seg_ids, pools, k)
    for j, pool in enumerate(pools):
        # The reference: score the whole pool, sort by score then segment id.
        want_rows, want_scores = _reference(bits, ctx, qbits, qctx, seg_ids, j, pool, k)
        got = ranked.positions[j][ranked.positions[j] >= 0]
        assert got.tolist() == want_rows.tolist()
        np.testing.assert_array_equal(ranked.scores[j, : got.size, 0], want_scores[:, 0])
        np.testing.assert_array_equal(ranked.scores[j, : got.size, 1], want_scores[:, 1])
        np.testing.assert_array_equal(ranked.scores[j, : got.size, 2], want_scores[:, 2])
        assert ranked.scored <= sum(p.size for p in pools)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), q=st.integers(1, 5), k=st.integers(1, 6))
def test_windows_after_seeds_match_a_full_scan(seed: int, n: int, q: int, k: int) -> None:
    """Exact mode's use: a few seeds, then a window of rows (skipping the seeds and excluded rows)."""
    rng = np.random.default_rng(seed)
    bits, ctx = _codes(rng, n, int(rng.integers(1, 4)))
    qbits, qctx = _codes(rng, q, 3)
    seg_ids = rng.permutation(n * 3)[:n].astype(np.int64)
    allowed = rng.random(n) < 0.8
    windows = np.sort(rng.integers(0, n + 1, (q, 2)), axis=1)
    seeds = [rng.choice(n, size=int(rng.integers(0, min(n, 8) + 1)), replace=False).astype(np.int64) for _ in range(q)]
    columns = np.ascontiguousarray(_summary(bits, ctx).T, rng.choice([np.int16, np.int32]))
    ranked = _rank(bits, ctx, qbits, qctx, seg_ids, seeds, k, windows=windows, allowed=allowed, columns=columns)
    for j in range(q):
        window = np.arange(windows[j, 0], windows[j, 1])
        rows = np.union1d(seeds[j], window[allowed[window]])
        want_rows, want_scores = _reference(bits, ctx, qbits, qctx, seg_ids, j, rows, k)
        got = ranked.positions[j][ranked.positions[j] >= 0]
        assert got.tolist() == want_rows.tolist()
        np.testing.assert_array_equal(ranked.scores[j, : got.size, 0], want_scores[:, 0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), q=st.integers(1, 5), k=st.integers(1, 6))
def test_bitbound_windows_cover_the_whole_class(seed: int, n: int, q: int, k: int) -> None:
    """Rows sorted by mask popcount, as in a shard: seeds, then BitBound's window (walked outwards,
    narrowed as the floor rises), equal a full scan, with the summary's columns in either dtype."""
    rng = np.random.default_rng(seed)
    bits, ctx = _codes(rng, n, int(rng.integers(1, 4)))
    order = np.argsort(bits.sum(1), kind="stable")
    bits, ctx = bits[order], ctx[order]
    qbits, qctx = _codes(rng, q, 3)
    seg_ids = rng.permutation(n * 3)[:n].astype(np.int64)
    allowed = rng.random(n) < 0.9
    seeds = [rng.choice(n, size=int(rng.integers(0, min(n, 12) + 1)), replace=False).astype(np.int64) for _ in range(q)]
    columns = np.ascontiguousarray(_summary(bits, ctx).T, rng.choice([np.int16, np.int32]))
    ranked = _rank(bits, ctx, qbits, qctx, seg_ids, seeds, k, mask_pop=bits.sum(1), allowed=allowed, columns=columns)
    for j in range(q):
        rows = np.union1d(seeds[j], np.flatnonzero(allowed))
        want_rows, want_scores = _reference(bits, ctx, qbits, qctx, seg_ids, j, rows, k)
        got = ranked.positions[j][ranked.positions[j] >= 0]
        np.testing.assert_array_equal(ranked.scores[j, : got.size, 0], want_scores[:, 0])
        assert got.tolist() == want_rows.tolist()


def test_rank_pools_rejects_mismatched_queries() -> None:
    with pytest.raises(ValueError, match="pools"):
        rank_pools(
            mask=np.zeros((1, 1), np.int64),
            summary=np.zeros((1, 10), np.int32),
            contexts=BoxedContexts.from_rows(np.zeros((1, 8), np.uint8), (1, 8)),
            blocks=np.zeros((1, 1), np.uint8),
            segment_ids=np.zeros(1),
            pools=[np.zeros(0, np.int64)],
            query_mask=np.zeros((2, 1), np.int64),
            query_summary=np.zeros((2, 10), np.int32),
            query_context=np.zeros((2, 8), np.uint8),
            query_blocks=np.zeros((2, 1), np.uint8),
            query_cols=[np.zeros(0, np.int64)] * 2,
            k=1,
        )
