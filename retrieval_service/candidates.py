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
    lists_per_sqrt: float = 4.0  # nlist = lists_per_sqrt * sqrt(n)
    nprobe: int = 16
    use_gpu: bool = True


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
        rng = np.random.default_rng(0)
        sample = coarse[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = config.nprobe
    else:
        index = faiss.IndexBinaryFlat(d)
    index.add(np.ascontiguousarray(coarse))
    return index


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row positions of the nearest codes by Hamming distance; -1 pads missing ones."""
    k = max(1, min(k, index.ntotal))
    _, ids = index.search(np.ascontiguousarray(queries), k)
    return ids
