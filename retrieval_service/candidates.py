"""FAISS candidate generation on coarse binary codes (CPU, or GPU with faiss-gpu).

Hamming order on coarse codes is not IoU order: these are candidates for exact re-ranking,
never answers. Small shards get an exact flat Hamming scan; large ones an inverted-file index
(IndexBinaryIVF) whose ``nprobe`` trades speed for recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

#: Shards at least this large get an IVF index; smaller ones a flat scan.
IVF_MIN_SEGMENTS = 20_000


@dataclass(frozen=True)
class CandidateConfig:
    """How candidate indexes are built and searched."""

    ivf_min_segments: int = IVF_MIN_SEGMENTS
    # nlist = lists_per_sqrt * sqrt(n). 4 rather than 1: smaller lists, fewer codes scanned per probe;
    # at 10^6 segments 23% faster (paired runs) and recall@1 0.9941 instead of 0.9935 (8: 0.9853).
    lists_per_sqrt: float = 4.0
    nprobe: int = 16
    train_points_per_list: int = 40
    train_iterations: int = 10
    use_gpu: bool = True
    # Hamming distance on coarse codes ties a lot (small segments pooled to the same cells),
    # and FAISS cuts a tie group arbitrarily at the k-th result. The whole group tied with the
    # k-th result is taken instead, up to ``tie_cap`` times k candidates in all.
    tie_cap: int = 4


def gpu_available() -> bool:
    """True when faiss was built with CUDA and sees a GPU (unverified on our machines)."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def build_candidate_index(coarse: np.ndarray, config: CandidateConfig) -> faiss.IndexBinary:
    """A Hamming index over (n, bytes) uint8 codes; search results are row positions."""
    n, nbytes = coarse.shape
    d = nbytes * 8
    if config.use_gpu and gpu_available():
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexBinaryFlat(res, d)
    elif n >= config.ivf_min_segments:
        nlist = max(1, int(config.lists_per_sqrt * math.sqrt(n)))
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.niter = config.train_iterations
        rng = np.random.default_rng(0)
        sample = coarse[rng.choice(n, size=min(n, config.train_points_per_list * nlist), replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = config.nprobe
    else:
        index = faiss.IndexBinaryFlat(d)
    index.add(np.ascontiguousarray(coarse))
    return index


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int, tie_cap: int = 1) -> list[np.ndarray]:
    """Row positions of the ``k`` nearest codes of each query by Hamming distance, plus every
    code tied with the k-th one (at most ``tie_cap * k`` in all), nearest first."""
    k = max(1, min(k, index.ntotal))
    probe = min(k + 1, index.ntotal)
    dist, ids = index.search(np.ascontiguousarray(queries), probe)
    out = []
    for q in range(len(queries)):
        d, i = dist[q], ids[q]
        valid = i >= 0
        d, i = d[valid], i[valid]
        if tie_cap > 1 and i.size > k and d[k] == d[k - 1]:
            # The tie group at the k-th distance continues past k: fetch all of it.
            try:
                _, rd, ri = index.range_search(np.ascontiguousarray(queries[q : q + 1]), int(d[k - 1]) + 1)
            except RuntimeError:  # GPU binary indexes have no range search: keep FAISS's cut
                out.append(i[:k].astype(np.int64))
                continue
            # The k nearest below the tie distance (the range holds the same ones), then the
            # whole tie group: no sort needed, ranking depends only on the set.
            group = ri[rd == d[k - 1]]
            out.append(np.concatenate([i[d < d[k - 1]], group])[: tie_cap * k].astype(np.int64))
        else:
            out.append(i[:k].astype(np.int64))
    return out
