"""The bank's FAISS indexes: one Hamming index of coarse codes per class, for candidate search.

Hamming order on coarse codes is not IoU order: these indexes give candidates for exact
re-ranking, never answers. The indexer writes one per class into every bank version
(``faiss/class_NNN.faissbin``, docs/bank-format.md section 7) and the retrieval engine loads
them; both build them with :func:`build_candidate_index`, so a loaded index is the one the
engine would have built.

Each is an ``IndexBinaryIDMap`` whose ids are segment ids, over an exact flat scan
(``IndexBinaryFlat``, codes in ascending id order) for classes smaller than
``CandidateConfig.ivf_min_segments``, and over an inverted file (``IndexBinaryIVF``, ``4 sqrt(n)``
lists) from there, codes added in the engine's shard order (:func:`shard_order`): an IVF index's
training sample and the order it scans codes tied at one distance follow the order codes are
given in, and the engine must load the index it would have built. The file itself says which
kind it is and how many lists it has (:func:`is_built_as`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from memory_bank.tables import faiss_index_name

log = logging.getLogger(__name__)

#: Classes with at least this many segments get an IVF index; smaller ones a flat scan.
IVF_MIN_SEGMENTS = 20_000


@dataclass(frozen=True)
class CandidateConfig:
    """How candidate indexes are built and searched."""

    ivf_min_segments: int = IVF_MIN_SEGMENTS
    # nlist = lists_per_sqrt * sqrt(n). 4 rather than 1: smaller lists, fewer codes scanned per probe;
    # at 10^6 segments 23% faster (paired runs) and recall@1 0.9941 instead of 0.9935 (8: 0.9853).
    lists_per_sqrt: float = 4.0
    nprobe: int = 16
    # A class of n > grow_from codes probes nprobe * (n / grow_from) ** nprobe_growth lists and
    # takes candidates * (n / grow_from) ** candidates_growth: its lists grow as sqrt(n), its near
    # duplicates as n, and fixed counts lose recall (benchmarks/retrieval.py, its sweep at 10^7:
    # recall@1 0.940 / 0.966 / 0.983 / 0.987 at candidates growth 0.25 / 0.5 / 0.75 / 1, one thread).
    # None: the same counts for every class.
    grow_from: int | None = 250_000
    nprobe_growth: float = 0.5
    candidates_growth: float = 0.75
    train_points_per_list: int = 40
    train_iterations: int = 10
    use_gpu: bool = True
    # Hamming distance on coarse codes ties a lot (small segments pooled to the same cells),
    # and FAISS cuts a tie group arbitrarily at the k-th result. The whole group tied with the
    # k-th result is taken instead, up to ``tie_cap`` times k candidates in all.
    tie_cap: int = 4

    def ivf_lists(self, n: int) -> int:
        """Inverted lists of an index over ``n`` codes; 0 means a flat scan."""
        return max(1, int(self.lists_per_sqrt * math.sqrt(n))) if n >= self.ivf_min_segments else 0

    def _growth(self, n: int, exponent: float) -> float:
        if self.grow_from is None or n <= self.grow_from:
            return 1.0
        return (n / self.grow_from) ** exponent

    def nprobe_for(self, n: int) -> int:
        """Inverted lists probed in a class of ``n`` codes."""
        return round(self.nprobe * self._growth(n, self.nprobe_growth))

    def candidates_for(self, n: int, candidates: int) -> int:
        """Candidates fast mode takes in a class of ``n`` codes when asked for ``candidates``."""
        return round(candidates * self._growth(n, self.candidates_growth))


def shard_order(mask_popcount: np.ndarray) -> np.ndarray:
    """The order of a class's segments (given in id order) in the engine's class shards: by mask
    popcount, ties by segment id. An IVF index trains on a sample drawn in this order."""
    return np.argsort(mask_popcount, kind="stable")


def build_candidate_index(
    coarse: np.ndarray, config: CandidateConfig, ids: np.ndarray | None = None
) -> faiss.IndexBinaryIDMap:
    """An ID-mapped Hamming index over (n, bytes) uint8 codes; searches return ``ids`` (default: row positions).

    Codes are added in the order given, and an IVF index draws its training sample from them in
    that order (seeded).
    """
    if coarse.ndim != 2 or coarse.dtype != np.uint8:
        raise ValueError(f"coarse codes must be (n, bytes) uint8, got {coarse.shape} {coarse.dtype}")
    n, d = coarse.shape[0], coarse.shape[1] * 8
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    nlist = config.ivf_lists(n)
    if nlist:
        quantizer = faiss.IndexBinaryFlat(d)
        inner = faiss.IndexBinaryIVF(quantizer, d, nlist)
        inner.own_fields = True
        quantizer.this.disown()
        inner.cp.niter = config.train_iterations
        rng = np.random.default_rng(0)
        sample = coarse[rng.choice(n, size=min(n, config.train_points_per_list * nlist), replace=False)]
        _train_on_one_thread(inner, np.ascontiguousarray(sample))
        inner.nprobe = config.nprobe_for(n)
    else:
        inner = faiss.IndexBinaryFlat(d)
    index = faiss.IndexBinaryIDMap(inner)
    index.add_with_ids(np.ascontiguousarray(coarse), ids)
    return index


def _train_on_one_thread(index: faiss.IndexBinaryIVF, sample: np.ndarray) -> None:
    # FAISS's k-means sums in parallel, so its lists depend on the OpenMP thread count: one thread
    # makes every build (the indexer's, the engine's) give the same index. The setting is
    # process-wide for the duration.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)


def is_built_as(index: faiss.IndexBinary, n: int, config: CandidateConfig) -> bool:
    """Whether ``index`` (e.g. read from a bank) holds ``n`` codes the way ``config`` builds them:
    a flat scan, or an IVF index with as many lists."""
    if not isinstance(index, faiss.IndexBinaryIDMap) or index.ntotal != n:
        return False
    inner = faiss.downcast_IndexBinary(index.index)
    nlist = config.ivf_lists(n)
    if nlist:
        return isinstance(inner, faiss.IndexBinaryIVF) and inner.nlist == nlist
    return isinstance(inner, faiss.IndexBinaryFlat)


def write_class_indexes(
    version_dir: Path,
    coarse: np.ndarray,
    class_id: np.ndarray,
    mask_popcount: np.ndarray,
    num_classes: int,
    config: CandidateConfig | None = None,
) -> int:
    """Write ``faiss/class_NNN.faissbin`` for every class that has segments; returns how many.

    ``coarse``, ``class_id`` and ``mask_popcount`` have one row per segment, in id order.
    """
    config = config or CandidateConfig()
    written = 0
    for c in range(num_classes):
        ids = np.flatnonzero(class_id == c)
        if ids.size == 0:
            continue
        if config.ivf_lists(ids.size):
            ids = ids[shard_order(mask_popcount[ids])]
        path = Path(version_dir) / faiss_index_name(c)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index_binary(build_candidate_index(coarse[ids], config, ids), str(path))
        written += 1
    log.info("wrote %d FAISS binary indexes (%d codes of %d bits)", written, len(class_id), coarse.shape[1] * 8)
    return written


def read_class_index(source: Path | bytes, config: CandidateConfig | None = None) -> faiss.IndexBinaryIDMap:
    """Load a class index written by :func:`write_class_indexes`, set to probe as ``config`` says for its size.

    ``source`` is the file's path, or its bytes (:meth:`Bank.faiss_index_bytes`, any storage).
    """
    if isinstance(source, bytes):
        index = faiss.deserialize_index_binary(np.frombuffer(source, dtype=np.uint8))
    else:
        index = faiss.read_index_binary(str(source))
    set_nprobe(index, config or CandidateConfig())
    return index


def set_nprobe(index: faiss.IndexBinary, config: CandidateConfig) -> None:
    """Make an IVF class index (or an ID map over one) probe as many lists as ``config`` says for
    its size; other indexes are left as they are."""
    inner = faiss.downcast_IndexBinary(index.index) if isinstance(index, faiss.IndexBinaryIDMap) else index
    if isinstance(inner, faiss.IndexBinaryIVF):
        inner.nprobe = config.nprobe_for(int(inner.ntotal))


def gpu_available() -> bool:
    """True when faiss was built with CUDA and sees a GPU (unverified on our machines)."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.IndexBinaryIDMap) -> faiss.IndexBinary:
    """A copy of a flat class index whose scan runs on the GPU; an IVF index as it is (FAISS has
    no GPU binary IVF). Unverified: no GPU on our machines, and faiss-gpu is not installed."""
    inner = faiss.downcast_IndexBinary(index.index)
    if not isinstance(inner, faiss.IndexBinaryFlat):
        return index
    codes = faiss.vector_to_array(inner.xb).reshape(inner.ntotal, inner.code_size)
    gpu = faiss.IndexBinaryIDMap(faiss.GpuIndexBinaryFlat(_gpu_resources(), inner.d))
    gpu.add_with_ids(codes, faiss.vector_to_array(index.id_map))
    return gpu


_GPU_RESOURCES: list = []


def _gpu_resources() -> object:
    if not _GPU_RESOURCES:  # one set of GPU resources (streams, scratch memory) for every index
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return _GPU_RESOURCES[0]


__all__ = [
    "IVF_MIN_SEGMENTS",
    "CandidateConfig",
    "build_candidate_index",
    "gpu_available",
    "is_built_as",
    "read_class_index",
    "shard_order",
    "to_gpu",
    "write_class_indexes",
]
