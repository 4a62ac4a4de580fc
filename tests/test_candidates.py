"""FAISS candidate search: the k nearest codes plus the whole tie group at the k-th distance."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank.candidate_index import CandidateConfig, build_candidate_index
from retrieval_service.candidates import search


def _hamming(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.bitwise_count(codes ^ query).sum(axis=1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    k=st.integers(1, 40),
    tie_cap=st.integers(1, 4),
)
def test_search_returns_nearest_and_completes_ties(seed: int, n: int, k: int, tie_cap: int) -> None:
    rng = np.random.default_rng(seed)
    # Few distinct codes, so that distances tie a lot (as small pooled segments do).
    distinct = rng.integers(0, 256, size=(int(rng.integers(1, 12)), 8), dtype=np.uint8)
    codes = distinct[rng.integers(0, len(distinct), n)]
    queries = rng.integers(0, 256, size=(3, 8), dtype=np.uint8)
    index = build_candidate_index(codes, CandidateConfig(use_gpu=False))  # flat: exact Hamming
    for query, got in zip(queries, search(index, queries, k, tie_cap), strict=True):
        dist = _hamming(codes, query)
        kk = min(k, n)
        kth = np.sort(dist)[kk - 1]
        assert len(set(got.tolist())) == got.size  # no duplicates
        # Everything strictly nearer than the k-th distance is in, and nothing farther.
        assert set(np.flatnonzero(dist < kth)) <= set(got.tolist())
        assert dist[got].max() == kth
        tied = int((dist == kth).sum())
        if tie_cap > 1:
            # The tie group is taken whole, up to tie_cap * k candidates in all.
            assert got.size == min(int((dist < kth).sum()) + tied, max(kk, tie_cap * kk))
        else:
            assert got.size == kk
        # Nearest first.
        assert np.all(np.diff(dist[got]) >= 0)
