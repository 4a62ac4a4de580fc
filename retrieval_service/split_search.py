"""``fast`` mode over a class split between shards, with exactly the single engine's candidate pool.

In one process, a class's pool for a query is what :func:`retrieval_service.candidates.search`
takes from the class's FAISS index: with ``k`` = the candidates asked for (clipped to the class
size ``N``) and ``probe = min(k + 1, N)``, the ``probe`` nearest codes by Hamming distance
(``d`` ascending) among those the index scans, then

- *tied* (more than ``k`` found and ``d[k] == d[k-1]``): every code nearer than ``D = d[k-1]``,
  then the codes at exactly ``D`` in the order the index scans them, cut at ``tie_cap * k`` in all;
- otherwise: the codes at distance ``<= D`` (exactly the first ``k``; all of them if fewer).

Each shard of a split class holds the class's own index *restricted to its rows*: the same IVF
quantizer (so the same lists are probed) and, in each inverted list, its own codes in their order
in the class's list (a flat index: its codes in row order). Then

1. ``probe``: each shard returns the distances of its ``probe`` nearest codes. The class's
   ``probe`` nearest distances are the smallest ``probe`` of their union, so the coordinator
   finds ``D`` and whether the query is tied exactly (:func:`cut_distance`);
2. ``group`` (tied queries only): each shard range-searches its codes at ``D`` and returns the
   scan key (probe rank of the list, position in the class's list) of the first ones. The class's
   scan order is the order of those keys, so the first ``tie_cap * k - (codes nearer than D)``
   keys of their union say how many of its group each shard keeps (:func:`group_cut`);
3. ``pool``: each shard ranks its part of the pool exactly, and the top-k of the union of the
   shards' top-k is the top-k of the pool.

The codes nearer than ``D`` (fewer than ``k``) and, untied, those at ``<= D`` (at most ``k``) are
all among each shard's ``probe`` nearest, so no shard misses one. The pool is the single engine's,
as a set, and its exact ranking (ties to the lower segment id) does not depend on the order, so the
answer is the same. This needs ``tie_cap > 1`` (with 1, FAISS cuts a tie group in an order a shard
cannot know) and FAISS on one thread, as the engine runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

#: Bits for the position of a code in its inverted list, in a scan key (the list's probe rank above).
_OFFSET_BITS = 40


@dataclass
class SplitIndex:
    """One shard's rows of a class's candidate index; searches return the shard's row positions."""

    index: faiss.IndexBinary  # IndexBinaryIVF (the class's quantizer) or IndexBinaryFlat
    list_of: np.ndarray  # (n,) int64 inverted list of each row (0 for a flat index)
    offset_of: np.ndarray  # (n,) int64 position of each row in the class's list (flat: its class row)

    @property
    def ntotal(self) -> int:
        return int(self.list_of.size)

    def scan_keys(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Where the class's index meets ``rows`` while scanning for ``query`` (one coarse code):
        the probe rank of their list, then their position in it."""
        if isinstance(self.index, faiss.IndexBinaryIVF):
            _, lists = self.index.quantizer.search(np.ascontiguousarray(query[None]), self.index.nprobe)
            rank = np.full(self.index.nlist, np.iinfo(np.int64).max >> _OFFSET_BITS, np.int64)
            probed = lists[0][lists[0] >= 0]
            rank[probed] = np.arange(probed.size)
            return (rank[self.list_of[rows]] << _OFFSET_BITS) | self.offset_of[rows]
        return self.offset_of[rows]


def restrict_index(index: faiss.IndexBinaryIDMap, rows: np.ndarray) -> SplitIndex:
    """``index`` (a class's, labels = class row positions, as the engine loads it) cut to the class
    rows ``rows`` (ascending), which become rows ``0..len(rows)-1`` of the result."""
    rows = np.asarray(rows, np.int64)
    inner = faiss.downcast_IndexBinary(index.index)
    label = faiss.vector_to_array(index.id_map)  # inner id -> class row
    if isinstance(inner, faiss.IndexBinaryFlat):
        codes = faiss.vector_to_array(inner.xb).reshape(inner.ntotal, inner.code_size)
        by_row = np.empty_like(codes)
        by_row[label] = codes
        flat = faiss.IndexBinaryFlat(inner.d)
        flat.add(np.ascontiguousarray(by_row[rows]))
        return SplitIndex(flat, np.zeros(rows.size, np.int64), rows.copy())
    if not isinstance(inner, faiss.IndexBinaryIVF):
        raise ValueError(f"cannot split a {type(inner).__name__} candidate index between shards")
    quantizer = faiss.clone_binary_index(inner.quantizer)
    part = faiss.IndexBinaryIVF(quantizer, inner.d, inner.nlist)
    part.own_fields = True
    quantizer.this.disown()
    part.is_trained = True
    part.nprobe = inner.nprobe
    list_of = np.full(rows.size, -1, np.int64)
    offset_of = np.full(rows.size, -1, np.int64)
    lists = inner.invlists
    for lst in range(inner.nlist):
        size = lists.list_size(lst)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(lst), size)
        class_rows = label[ids]
        local = np.searchsorted(rows, class_rows)
        mine = (local < rows.size) & (rows[np.minimum(local, rows.size - 1)] == class_rows)
        if not mine.any():
            continue
        codes = faiss.rev_swig_ptr(lists.get_codes(lst), size * inner.code_size).reshape(size, inner.code_size)
        keep_ids = np.ascontiguousarray(local[mine].astype(np.int64))
        keep_codes = np.ascontiguousarray(codes[mine])
        part.invlists.add_entries(lst, keep_ids.size, faiss.swig_ptr(keep_ids), faiss.swig_ptr(keep_codes))
        list_of[keep_ids] = lst
        offset_of[keep_ids] = np.flatnonzero(mine)
    if (list_of < 0).any():
        raise ValueError("the class's candidate index does not hold every row of the shard")
    part.ntotal = rows.size
    return SplitIndex(part, list_of, offset_of)


@dataclass(frozen=True)
class Cut:
    """Where the class's pool for one query ends (see the module docstring)."""

    distance: float  # D, the k-th nearest distance (inf when fewer than k codes were found)
    tied: bool
    nearer: int  # codes strictly nearer than D
    group_room: int  # codes at D the pool takes when tied: tie_cap * k - nearer


def search_sizes(count: int, class_size: int) -> tuple[int, int]:
    """``(k, probe)`` of :func:`retrieval_service.candidates.search` for ``count`` candidates."""
    k = max(1, min(count, class_size))
    return k, min(k + 1, class_size)


def cut_distance(distances: list[np.ndarray], k: int, probe: int, tie_cap: int) -> Cut:
    """The class's cut for one query from each shard's ``probe`` nearest distances."""
    d = np.sort(np.concatenate(distances))[:probe] if distances else np.zeros(0)
    if d.size < k:
        return Cut(np.inf, False, int(d.size), 0)
    dk = float(d[k - 1])
    tied = tie_cap > 1 and d.size > k and d[k] == d[k - 1]
    nearer = int(np.count_nonzero(d < dk))
    return Cut(dk, bool(tied), nearer, tie_cap * k - nearer if tied else 0)


def group_cut(keys: list[np.ndarray], room: int) -> list[int]:
    """How many of its group at ``D`` each shard keeps: the first ``room`` of the union of
    ``keys`` (each shard's first ``room`` scan keys, ascending) in key order."""
    allkeys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if allkeys.size <= room:
        return [int(k.size) for k in keys]
    last = np.partition(allkeys, room - 1)[room - 1] if room > 0 else -1
    return [int(np.count_nonzero(k <= last)) for k in keys]


def nearest(index: SplitIndex, queries: np.ndarray, probe: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each query's ``probe`` nearest rows of the shard (fewer if it has fewer): (rows, distances)."""
    n = min(probe, index.ntotal)
    if n == 0:
        empty = [np.zeros(0, np.int64) for _ in range(len(queries))]
        return empty, [np.zeros(0, np.int32) for _ in range(len(queries))]
    dist, ids = index.index.search(np.ascontiguousarray(queries), n)
    valid = ids >= 0
    return [ids[q][valid[q]] for q in range(len(queries))], [dist[q][valid[q]] for q in range(len(queries))]


def tie_group(index: SplitIndex, query: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """The shard's rows at exactly ``distance`` from ``query``, in the class's scan order: (rows, keys)."""
    if index.ntotal == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, rd, ri = index.index.range_search(np.ascontiguousarray(query[None]), int(distance) + 1)
    rows = ri[rd == int(distance)].astype(np.int64)
    keys = index.scan_keys(query, rows)
    order = np.argsort(keys, kind="stable")
    return rows[order], keys[order]
