"""Scoring kernels against plain numpy (the CUDA-only formulas are checked on CPU here)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval_service.iou import iou64
from retrieval_service.kernels import count_equal, lane_group, padded_width, popcount64, popcount_rows


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), words=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_popcounts_match_numpy(n: int, words: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 2**64, size=(n, words), dtype=np.uint64)
    want = np.bitwise_count(x).sum(axis=1)
    t = torch.from_numpy(x.view(np.int64))
    np.testing.assert_array_equal(popcount_rows(t).numpy(), want)
    # The SWAR formula is what CUDA runs; int64 wrap-around must not corrupt the counts.
    np.testing.assert_array_equal(popcount64(t).sum(dim=1).numpy(), want)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), cells=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1), values=st.integers(1, 4))
def test_count_equal_matches_numpy(n: int, cells: int, seed: int, values: int) -> None:
    rng = np.random.default_rng(seed)
    m = padded_width(cells)
    rows = rng.integers(0, values, size=(n, m), dtype=np.uint8)
    query = rng.integers(0, values, size=m, dtype=np.uint8)
    got = count_equal(torch.from_numpy(rows), torch.from_numpy(query)).numpy()
    np.testing.assert_array_equal(got, (rows == query).sum(axis=1))


def test_lane_group_and_iou() -> None:
    assert lane_group(344) == 172 and lane_group(8) == 8 and lane_group(257) == 1
    assert all(padded_width(c) % 64 == 0 and padded_width(c) >= c for c in (1, 64, 65, 2700))
    np.testing.assert_array_equal(iou64(np.array([0, 2, 3]), np.array([0, 2, 3]), np.array([0, 4, 3])), [0, 0.5, 1])
