"""FAISS candidates for a class shard: the bank's stored index, searched with tie completion.

The engine loads each class's index from the bank (:mod:`memory_bank.candidate_index` built it
at indexing time) and makes it the index it would have built from the shard: labels are shard
row positions, and a flat index's codes are laid out in row order (a flat file holds them in id
order; an IVF file already in row order), so that codes tied at one distance are scanned, and
cut, in the same order. It builds that index in memory, with the same function, only when the
bank has none that fits: an index made from arrays, a bank version other than the index's, a
shard of part of a class, or a class whose stored index is not the kind the config asks for
(e.g. a flat index in a bank written before its large classes got IVF indexes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import faiss
import numpy as np

from memory_bank import Bank
from memory_bank.candidate_index import (
    CandidateConfig,
    build_candidate_index,
    gpu_available,
    is_built_as,
    read_class_index,
    to_gpu,
)
from memory_bank.codes import coarse_bits, code_bytes
from retrieval_service.index import ClassShard

log = logging.getLogger(__name__)

Source = Literal["bank", "built"]


def shard_candidate_index(
    shard: ClassShard, config: CandidateConfig, bank: Bank | None = None
) -> tuple[faiss.IndexBinary, Source]:
    """The candidate index of ``shard``, whose searches return shard row positions, and where it came from.

    ``bank`` must be the bank version the shard was made from. Its stored index is used when it
    holds exactly the shard's segments and is built as ``config`` builds one for that many.
    """
    return class_candidate_index(shard.class_id, shard.segment_ids, shard.coarse, config, bank)


def class_candidate_index(
    class_id: int,
    segment_ids: np.ndarray,
    coarse: np.ndarray | Callable[[], np.ndarray],
    config: CandidateConfig,
    bank: Bank | None = None,
) -> tuple[faiss.IndexBinary, Source]:
    """:func:`shard_candidate_index` from a class's segment ids in shard row order and their coarse
    codes in that order (or a function that reads them: called only when the index is built here)."""
    index = _stored_index(class_id, segment_ids, config, bank) if bank is not None else None
    source: Source = "bank"
    if index is None:
        codes = coarse() if callable(coarse) else coarse
        index, source = build_candidate_index(codes, config), "built"
    if config.use_gpu and gpu_available():
        index = to_gpu(index)
    return index, source


def _stored_index(
    class_id: int, segment_ids: np.ndarray, config: CandidateConfig, bank: Bank
) -> faiss.IndexBinaryIDMap | None:
    data = bank.faiss_index_bytes(class_id)  # bytes, so that banks on object storage work alike
    if data is None:
        return None
    index = read_class_index(data, config)
    n = int(segment_ids.size)
    if index.d != code_bytes(coarse_bits(bank.config)) * 8 or not is_built_as(index, n, config):
        log.warning("class %d: the bank's FAISS index is not as configured; building one in memory", class_id)
        return None
    # The shard row of every stored code (its segment id's position in the shard).
    stored = faiss.vector_to_array(index.id_map)
    by_id = np.argsort(segment_ids)
    pos = np.minimum(np.searchsorted(segment_ids[by_id], stored), n - 1)
    if np.unique(stored).size != stored.size or not np.array_equal(segment_ids[by_id[pos]], stored):
        return None  # another set of segments (e.g. a shard of part of the class)
    rows = by_id[pos].astype(np.int64)
    inner = faiss.downcast_IndexBinary(index.index)
    if isinstance(inner, faiss.IndexBinaryFlat):  # codes into row order, so that labels are positions again
        codes = faiss.vector_to_array(inner.xb).reshape(n, inner.code_size)
        laid_out = np.empty_like(codes)
        laid_out[rows] = codes
        faiss.copy_array_to_vector(laid_out.ravel(), inner.xb)
        rows = np.arange(n, dtype=np.int64)
    faiss.copy_array_to_vector(rows, index.id_map)
    return index


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int, tie_cap: int = 1) -> list[np.ndarray]:
    """Labels of the ``k`` nearest codes of each query by Hamming distance, plus every code tied
    with the k-th one (at most ``tie_cap * k`` in all, in the order the index scans them), nearest first."""
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
            # whole tie group in scan order, cut at tie_cap * k.
            group = ri[rd == d[k - 1]]
            out.append(np.concatenate([i[d < d[k - 1]], group])[: tie_cap * k].astype(np.int64))
        else:
            out.append(i[:k].astype(np.int64))
    return out
