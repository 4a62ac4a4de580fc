"""The retrieval engine: top-k bank segments for every component of a layout.

Two modes, one score (``IoU(mask) + IoU(context)`` at the bank's fine grid, float64, ties to
the lower segment id):

- ``exact``: the same answer as the brute-force reference, found without scanning everything.
  FAISS candidates seed a k-th best score ``t``; the popcount bound (BitBound) then narrows the
  class to a window of mask sizes, grid-box overlaps bound both IoUs, and only the segments
  whose upper bound reaches ``t`` are scored exactly.
- ``fast``: FAISS Hamming candidates on coarse codes, re-ranked exactly; ``candidates`` sets
  how many.

and a third, ``full``, that scores on pixels at the working resolution instead of the grid,
exactly, seeded by fast mode (:mod:`retrieval_service.full_resolution`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from memory_bank import Bank, SegmentConfig
from memory_bank.candidate_index import CandidateConfig
from memory_bank.classes import IGNORE
from memory_bank.errors import OptionError
from retrieval_service.candidates import search, shard_candidate_index
from retrieval_service.full_resolution import SEEDS, PixelFrames, rank_on_pixels
from retrieval_service.index import (
    ClassShard,
    SegmentIndex,
    block_counts,
    block_grid_for,
    grid_boxes,
    pruning_summary,
)
from retrieval_service.iou import iou64
from retrieval_service.kernels import NO_MATCH, count_equal, padded_width, popcount_rows
from retrieval_service.pool_ranking import compile_rank_pools, rank_pools
from retrieval_service.query import Query, prepare_query
from retrieval_service.types import ComponentResult, Match, RetrievalOptions, RetrievalResult, Status

log = logging.getLogger(__name__)


#: Fast mode scores a class of at most this many segments exactly: the compiled exact scan costs
#: about what FAISS and the pool ranking do there, and recall is 1 (benchmarks/retrieval.py).
EXACT_BELOW = 50_000
#: FAISS candidates per component that set exact mode's first floor on the k-th best score.
EXACT_SEEDS = 32
#: At most this many threads rank the classes of a layout at once (see RetrievalEngine).
CLASS_THREADS = 4

_class_pools: dict[int, ThreadPoolExecutor] = {}
_class_pools_lock = threading.Lock()


def _class_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` class-ranking threads."""
    with _class_pools_lock:
        if threads not in _class_pools:
            _class_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sims-rank")
        return _class_pools[threads]


@dataclass
class _QueryRows:
    """Codes of the query components of one class, as the kernels want them."""

    ids: list[int]  # component indices
    mask: torch.Tensor  # (q, words) int64
    context: torch.Tensor  # (q, cells padded) uint8, absent cells = NO_MATCH
    mask_pop: np.ndarray  # (q,)
    context_pop: np.ndarray
    mask_box: np.ndarray  # (4, q)
    context_box: np.ndarray
    coarse: np.ndarray  # (q, bytes)
    context_blocks: np.ndarray  # (q, blocks) uint8
    summary: np.ndarray  # (q, 10) int32, see pruning_summary
    present_cols: list[np.ndarray]  # per query, the cells where its context is present

    def __getstate__(self) -> dict:
        # Rows travel to shards (retrieval_service/sharded.py) as plain arrays: pickling a tensor
        # or a list of small arrays costs ~0.1 ms each, the whole state as numpy a few microseconds.
        state = dict(self.__dict__)
        state["mask"], state["context"] = self.mask.cpu().numpy(), self.context.cpu().numpy()
        cols = self.present_cols
        state["present_cols"] = (np.concatenate(cols) if cols else np.zeros(0, np.int64), [c.size for c in cols])
        return state

    def __setstate__(self, state: dict) -> None:
        cols, sizes = state["present_cols"]
        state["present_cols"] = np.split(cols, np.cumsum(sizes)[:-1]) if sizes else []
        state["mask"], state["context"] = torch.from_numpy(state["mask"]), torch.from_numpy(state["context"])
        self.__dict__.update(state)

    def take(self, positions: list[int]) -> _QueryRows:
        """The rows at ``positions`` (one class's components out of a whole layout's)."""
        at = np.asarray(positions, np.int64)
        t = torch.from_numpy(at).to(self.mask.device)
        return _QueryRows(
            ids=[self.ids[p] for p in positions],
            mask=self.mask.index_select(0, t),
            context=self.context.index_select(0, t),
            mask_pop=self.mask_pop[at],
            context_pop=self.context_pop[at],
            mask_box=self.mask_box[:, at],
            context_box=self.context_box[:, at],
            coarse=np.ascontiguousarray(self.coarse[at]),
            context_blocks=self.context_blocks[at],
            summary=self.summary[at],
            present_cols=[self.present_cols[p] for p in positions],
        )


def query_rows(query: Query, comps: list[int], config: SegmentConfig, device: torch.device) -> _QueryRows:
    """The codes of components ``comps`` of ``query`` as the kernels want them."""
    grid = config.fine_grid
    cells = grid[0] * grid[1]
    codes = query.codes
    mask = np.ascontiguousarray(codes.mask[comps])
    context = np.full((len(comps), padded_width(cells)), NO_MATCH, np.uint8)
    raw = codes.context[comps]
    context[:, :cells] = np.where(raw == IGNORE, NO_MATCH, raw)
    bits = np.unpackbits(mask, axis=1, count=cells).astype(bool)
    present = raw != IGNORE
    mask_pop = codes.mask_popcount[comps].astype(np.int64)
    context_pop = codes.context_popcount[comps].astype(np.int64)
    mask_box, context_box = grid_boxes(bits, grid), grid_boxes(present, grid)
    return _QueryRows(
        ids=comps,
        mask=torch.from_numpy(mask.view(np.int64)).to(device),
        context=torch.from_numpy(context).to(device),
        mask_pop=mask_pop,
        context_pop=context_pop,
        mask_box=mask_box,
        context_box=context_box,
        coarse=np.ascontiguousarray(codes.coarse[comps]),
        context_blocks=block_counts(present, grid, block_grid_for(grid)),
        summary=pruning_summary(mask_pop, context_pop, mask_box, context_box),
        present_cols=[np.flatnonzero(r).astype(np.int64) for r in present],
    )


class LayoutEngine(ABC):
    """The answer to a layout, shared by every engine: statuses, query rows, the seeded choice, pins.

    A subclass says which classes it holds, ranks the retrievable components of each class
    (:meth:`_rank_classes`) and scores a pinned segment that is not among a component's matches
    (:meth:`_score_pin`). :class:`RetrievalEngine` does both in this process;
    :class:`retrieval_service.sharded.ShardedEngine` asks the shards that hold each class.
    """

    #: The bank the engine answers from (image names, ``full`` mode), if it has one.
    bank: Bank | None = None
    _names: list[str] | None = None  # image id -> source file, from the bank

    # Hooks
    @property
    @abstractmethod
    def version(self) -> str:
        """The bank version every answer comes from."""

    @abstractmethod
    def layout_frame(self) -> tuple[int, SegmentConfig, tuple[int, int], torch.device]:
        """``(num_classes, segment config, resolution, device)`` that queries are cut and coded for."""

    @abstractmethod
    def has_class(self, class_id: int) -> bool:
        """Whether the bank holds segments of ``class_id``."""

    @abstractmethod
    def _rank_classes(
        self, query: Query, rows: _QueryRows, by_class: dict[int, list[int]], options: RetrievalOptions
    ) -> tuple[dict[int, tuple[Match, ...]], int]:
        """The matches of every component in ``by_class`` (class -> component indices, whose rows are
        ``rows`` in that order, class after class), and how many segments were scored exactly."""

    @abstractmethod
    def _segment_class(self, segment_id: int) -> int:
        """The class of a bank segment, -1 when the version has no such segment."""

    @abstractmethod
    def _score_pin(self, query: Query, rows: _QueryRows, class_id: int, segment_id: int) -> Match:
        """The exact grid match of the component in ``rows`` (one row) with ``segment_id``."""

    # 1. Entry points
    def retrieve(
        self,
        layout: np.ndarray,
        options: RetrievalOptions | None = None,
        instances: np.ndarray | None = None,
        *,
        checked: bool = False,
    ) -> RetrievalResult:
        """Top-k segments for every component of a label map at the bank's resolution.

        ``instances``, an instance map of the layout, cuts thing classes per instance on a bank
        built with instances, and is ignored on one built without. ``checked``: the layout was
        already validated for this bank (e.g. by :func:`~memory_bank.png.decode_layout`)."""
        num_classes, config, resolution, _ = self.layout_frame()
        start = time.perf_counter()
        query = prepare_query(layout, num_classes, config, resolution, instances, checked=checked)
        prepared = time.perf_counter() - start
        result = self.retrieve_query(query, options)
        result.timings["prepare"] = prepared
        return result

    def retrieve_query(self, query: Query, options: RetrievalOptions | None = None) -> RetrievalResult:
        """Like :meth:`retrieve`, for a layout already cut by :func:`prepare_query`."""
        options = options or RetrievalOptions()
        _, config, _, device = self.layout_frame()
        t0 = time.perf_counter()
        seg = query.segments
        min_area = max(options.min_area, config.min_area)
        results: dict[int, ComponentResult] = {}
        by_class: dict[int, list[int]] = {}
        for i in range(len(seg)):
            c = int(seg.class_id[i])
            if seg.area[i] < min_area:
                results[i] = self._empty(query, i, Status.BELOW_MIN_AREA)
            elif not self.has_class(c):
                results[i] = self._empty(query, i, Status.CLASS_NOT_IN_BANK)
            else:
                by_class.setdefault(c, []).append(i)
        # Query rows for the whole layout at once: per-class calls cost more in overhead.
        retrievable = [i for comps in by_class.values() for i in comps]
        all_rows = query_rows(query, retrievable, config, device) if retrievable else None
        at = {i: p for p, i in enumerate(retrievable)}
        found, scored = self._rank_classes(query, all_rows, by_class, options) if retrievable else ({}, 0)
        for i, matches in found.items():
            status = Status.OK if matches else Status.NO_CANDIDATES
            results[i] = self._empty(query, i, status, matches)
        pins = self._check_pins(results, options.pins)
        rng = np.random.default_rng(options.seed) if options.seed is not None else None
        ordered = []
        for i in range(len(seg)):
            r = results[i]
            if r.matches:
                # Every component draws, pinned or not, so that a pin leaves the others' picks as they were.
                n = len(r.matches) if options.choose_from is None else min(len(r.matches), options.choose_from)
                choice = int(rng.integers(n)) if rng is not None else 0
                r = ComponentResult(r.component_id, r.class_id, r.bbox, r.area, r.status, r.matches, choice)
            if i in pins:
                r = self._pin(query, all_rows, at[i], r, pins[i])
            ordered.append(r)
        timings = {"retrieve": time.perf_counter() - t0}
        names = self._image_names({m.image_id for r in ordered for m in r.matches})
        return RetrievalResult(tuple(ordered), self.version, options.mode, timings, scored, names)

    # 1b. Pins: a component painted with a given segment
    def _check_pins(self, results: dict[int, ComponentResult], pins: dict[str, int]) -> dict[int, int]:
        """Pins as {component: segment}; an :class:`OptionError` for one that cannot be honoured."""
        out = {}
        for key, segment_id in pins.items():
            i = int(key)
            if i >= len(results):
                raise OptionError(
                    f"pin for component {i}: the layout has {len(results)} components (0..{len(results) - 1})",
                    kind="invalid_pin",
                )
            klass = self._segment_class(segment_id)
            if klass < 0:
                raise OptionError(
                    f"pin for component {i}: segment {segment_id} is not in bank version {self.version}",
                    kind="unknown_segment",
                )
            comp = results[i]
            if comp.status == Status.BELOW_MIN_AREA:
                raise OptionError(
                    f"pin for component {i}: it is smaller than the minimum area and gets no segment",
                    kind="invalid_pin",
                )
            if klass != comp.class_id:
                raise OptionError(
                    f"pin for component {i}: segment {segment_id} is of class {klass}, "
                    f"the component of class {comp.class_id}",
                    kind="pin_class_mismatch",
                )
            out[i] = int(segment_id)
        return out

    def _pin(
        self, query: Query, all_rows: _QueryRows | None, position: int, r: ComponentResult, segment_id: int
    ) -> ComponentResult:
        """``r`` with the pinned segment as its choice: found among its matches, else scored and appended."""
        for j, m in enumerate(r.matches):
            if m.segment_id == segment_id:
                return ComponentResult(r.component_id, r.class_id, r.bbox, r.area, Status.OK, r.matches, j)
        match = self._score_pin(query, all_rows.take([position]), r.class_id, segment_id)  # type: ignore[union-attr]
        matches = (*r.matches, match)
        return ComponentResult(r.component_id, r.class_id, r.bbox, r.area, Status.OK, matches, len(matches) - 1)

    def _image_names(self, image_ids: set[int]) -> dict[int, str]:
        """Source file of each image (empty without a bank)."""
        if self.bank is None:
            return {}
        if self._names is None:
            self._names = [str(n) for n in self.bank.images["source_file"].to_pylist()]
        return {i: self._names[i] for i in sorted(image_ids) if i < len(self._names)}

    @staticmethod
    def _empty(query: Query, i: int, status: Status, matches: tuple[Match, ...] = ()) -> ComponentResult:
        seg = query.segments
        bbox = tuple(int(v) for v in seg.bbox[i])
        return ComponentResult(i, int(seg.class_id[i]), bbox, int(seg.area[i]), status, matches)  # type: ignore[arg-type]


class RetrievalEngine(LayoutEngine):
    """Retrieval over one in-memory :class:`SegmentIndex`."""

    def __init__(
        self,
        index: SegmentIndex,
        candidate_config: CandidateConfig | None = None,
        cpu_threads: int | None = 1,
        bank: Bank | None = None,
        exact_below: int = EXACT_BELOW,
        class_threads: int | None = None,
    ) -> None:
        """``cpu_threads`` sets torch's intra-op threads and FAISS's OpenMP threads on CPU
        (process-wide). One is the default: the kernels work on small batches, and concurrent
        requests already use the cores; under load, two threads per op made torch 20x and FAISS
        10x slower here. ``None`` leaves both settings alone.

        ``class_threads``: the classes of one layout are ranked on this many threads at once
        (``fast`` and ``exact`` on CPU; one pool per process, shared by concurrent requests, so
        it never runs more than that many rankings at a time). Default: the CPU count, at most
        :data:`CLASS_THREADS`. FAISS (one OpenMP thread) and the compiled ranking release the GIL.

        ``bank`` (the bank the index was made from) lends its stored FAISS indexes, and enables
        ``full`` mode: its label and component maps are read into memory on the first such request.
        ``fast`` mode scores classes of at most ``exact_below`` segments exactly."""
        self.index = index
        self.exact_below = exact_below
        #: FAISS candidates that seed exact mode's floor (more: a higher floor, a shorter scan).
        self.exact_seeds = EXACT_SEEDS
        self.candidate_config = candidate_config or CandidateConfig()
        self.bank = bank
        self._frames: PixelFrames | None = None
        self._frames_lock = threading.Lock()
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # segment id -> (class, shard row), for pins
        #: Rank with the compiled CPU kernels (pool_ranking.py); False runs the torch path, which
        #: CUDA uses (tests run it on CPU too).
        self.compiled = index.device.type == "cpu"
        self.class_threads = max(1, class_threads or min(CLASS_THREADS, os.cpu_count() or 1))
        if cpu_threads is not None and index.device.type == "cpu":
            torch.set_num_threads(cpu_threads)
            faiss.omp_set_num_threads(cpu_threads)

    @classmethod
    def from_bank(cls, bank: Bank, device: torch.device | None = None, **kwargs: object) -> RetrievalEngine:
        return cls(SegmentIndex.from_bank(bank, device), bank=bank, **kwargs)  # type: ignore[arg-type]

    @property
    def version(self) -> str:
        return self.index.version

    def layout_frame(self) -> tuple[int, SegmentConfig, tuple[int, int], torch.device]:
        idx = self.index
        return idx.num_classes, idx.config, idx.resolution, idx.device

    def has_class(self, class_id: int) -> bool:
        return class_id in self.index.shards

    def pixel_frames(self) -> PixelFrames:
        """The bank's label and component maps for ``full`` mode, read once."""
        if self.bank is None:
            raise ValueError("full mode scores bank pixels: make the engine with RetrievalEngine.from_bank")
        with self._frames_lock:
            if self._frames is None:
                self._frames = PixelFrames.from_bank(self.bank)
        return self._frames

    def warm_up(self) -> float:
        """Load every class's FAISS index (and compile the CPU ranking kernel) now rather than
        on first use; returns seconds."""
        start = time.perf_counter()
        for shard in self.index.shards.values():
            self._faiss(shard)
        sources = [s.extras["faiss_source"] for s in self.index.shards.values()]
        log.info(
            "FAISS indexes: %d loaded from the bank, %d built in memory, in %.2f s",
            sources.count("bank"),
            sources.count("built"),
            time.perf_counter() - start,
        )
        compile_rank_pools()
        return time.perf_counter() - start

    # 1c. Ranking in this process: each class with its shard
    def _rank_classes(
        self, query: Query, rows: _QueryRows, by_class: dict[int, list[int]], options: RetrievalOptions
    ) -> tuple[dict[int, tuple[Match, ...]], int]:
        excluded = np.unique(np.asarray(options.exclude_images, np.int64))
        parts, start = [], 0
        for c, comps in by_class.items():
            parts.append((self.index.shards[c], comps, rows.take(list(range(start, start + len(comps))))))
            start += len(comps)

        def rank(part: tuple[ClassShard, list[int], _QueryRows]) -> tuple[list[tuple[Match, ...]], int]:
            return self.rank_class(query, part[0], part[2], options, excluded)

        if self.class_threads > 1 and self.compiled and options.mode != "full" and len(parts) > 1:
            # The costliest classes first, so that one is not left running alone at the end.
            parts.sort(key=lambda p: len(p[0]) * len(p[1]), reverse=True)
            ranked = list(_class_pool(self.class_threads).map(rank, parts))
        else:
            ranked = [rank(p) for p in parts]
        found: dict[int, tuple[Match, ...]] = {}
        for (_, comps, _), (matches, _) in zip(parts, ranked, strict=True):
            found.update(zip(comps, matches, strict=True))
        return found, sum(n for _, n in ranked)

    def rank_class(
        self, query: Query | None, shard: ClassShard, rows: _QueryRows, options: RetrievalOptions, excluded: np.ndarray
    ) -> tuple[list[tuple[Match, ...]], int]:
        """The top-k of each component in ``rows`` (all of ``shard``'s class) over ``shard`` in
        ``options.mode``, and how many segments were scored; ``query`` is needed by ``full`` mode only."""
        if options.mode == "fast":
            return self._fast(shard, rows, options.k, options.candidates, excluded)
        if options.mode == "full":
            return self._full(query, shard, rows, options, excluded)  # type: ignore[arg-type]
        return self._exact(shard, rows, options.k, excluded)

    def _segment_class(self, segment_id: int) -> int:
        klass, _ = self._segment_rows()
        return int(klass[segment_id]) if segment_id < klass.size else -1

    def _segment_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Segment id -> (class, row in its class shard), -1 where the index has none."""
        if self._rows is None:
            ids = [s.segment_ids for s in self.index.shards.values()]
            size = int(max((int(a.max()) + 1 for a in ids if a.size), default=0))
            klass, row = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
            for c, shard in self.index.shards.items():
                klass[shard.segment_ids], row[shard.segment_ids] = c, np.arange(shard.segment_ids.size)
            self._rows = klass, row
        return self._rows

    def _score_pin(self, query: Query, rows: _QueryRows, class_id: int, segment_id: int) -> Match:
        return self.score_segment(self.index.shards[class_id], rows, int(self._segment_rows()[1][segment_id]))

    def score_segment(self, shard: ClassShard, rows: _QueryRows, position: int) -> Match:
        """The exact grid match of the (one) component in ``rows`` with row ``position`` of ``shard``."""
        pos = np.array([position], np.int64)
        score, miou, ciou = self._score(shard, rows, 0, pos)
        sid, image = int(shard.segment_ids[position]), int(shard.image_ids[position])
        return Match(sid, image, float(score[0]), float(miou[0]), float(ciou[0]))

    # 2. Exact scoring of one query component against candidate rows
    def _context_inter(self, shard: ClassShard, rows: _QueryRows, j: int, pos: np.ndarray) -> np.ndarray:
        """Context intersections of query ``j`` with shard rows ``pos`` (torch: CUDA, and exact
        mode's scoring in chunks): the rows are unboxed on the host, then compared whole."""
        cells = self.index.config.fine_grid[0] * self.index.config.fine_grid[1]
        dense = np.full((pos.size, padded_width(cells)), IGNORE, np.uint8)
        dense[:, :cells] = shard.context.rows(pos)
        return count_equal(torch.from_numpy(dense).to(rows.context.device), rows.context[j]).cpu().numpy()

    def _mask_inter(self, shard: ClassShard, rows: _QueryRows, j: int, pos: np.ndarray) -> np.ndarray:
        p = torch.from_numpy(pos).to(shard.mask.device)
        return popcount_rows(shard.mask.index_select(0, p) & rows.mask[j]).cpu().numpy()

    def _score(self, shard: ClassShard, rows: _QueryRows, j: int, pos: np.ndarray) -> tuple[np.ndarray, ...]:
        """Exact float64 (score, mask IoU, context IoU) of query ``j`` against shard rows ``pos``."""
        if pos.size == 0:
            empty = np.zeros(0)
            return empty, empty, empty
        miou = iou64(self._mask_inter(shard, rows, j, pos), rows.mask_pop[j], shard.mask_pop[pos])
        ciou = iou64(self._context_inter(shard, rows, j, pos), rows.context_pop[j], shard.context_pop[pos])
        return miou + ciou, miou, ciou

    @staticmethod
    def _top(shard: ClassShard, pos: np.ndarray, scores: tuple[np.ndarray, ...], k: int) -> tuple[Match, ...]:
        score, miou, ciou = scores
        order = np.lexsort((shard.segment_ids[pos], -score))[:k]
        return tuple(
            Match(
                int(shard.segment_ids[pos[o]]),
                int(shard.image_ids[pos[o]]),
                float(score[o]),
                float(miou[o]),
                float(ciou[o]),
            )
            for o in order
        )

    # 3. Fast mode
    def _faiss(self, shard: ClassShard) -> faiss.IndexBinary:
        """The shard's FAISS index (searches return shard rows): the bank's, or built once."""
        if "faiss" not in shard.extras:
            bank = self.bank if self.bank is not None and self.bank.version == self.index.version else None
            shard.extras["faiss"], shard.extras["faiss_source"] = shard_candidate_index(
                shard, self.candidate_config, bank
            )
        return shard.extras["faiss"]

    def _candidates(
        self, shard: ClassShard, rows: _QueryRows, count: int, excluded: np.ndarray, tie_cap: int | None = None
    ) -> list[np.ndarray]:
        """FAISS candidates per query component, with excluded images filtered out (and the tie
        group at the last distance completed up to ``tie_cap``, by default the config's)."""
        extra = _excluded_count(shard, excluded)
        tie_cap = self.candidate_config.tie_cap if tie_cap is None else tie_cap
        found = search(self._faiss(shard), rows.coarse, count + extra, tie_cap)
        if not excluded.size:
            return found
        return [ids[~np.isin(shard.image_ids[ids], excluded)] for ids in found]

    def _fast(
        self, shard: ClassShard, rows: _QueryRows, k: int, count: int, excluded: np.ndarray
    ) -> tuple[list[tuple[Match, ...]], int]:
        """Top-k within the FAISS candidate pool, found with the same staged bounds as exact; for a
        class of at most ``exact_below`` segments, the exact top-k (as cheap there, and never wrong)."""
        if len(shard) <= self.exact_below:
            return self._exact(shard, rows, k, excluded)
        count = self.candidate_config.candidates_for(len(shard), count)
        pools = self._candidates(shard, rows, max(count, k), excluded)
        return self.rank_pools(shard, rows, k, pools)

    def rank_pools(
        self, shard: ClassShard, rows: _QueryRows, k: int, pools: list[np.ndarray]
    ) -> tuple[list[tuple[Match, ...]], int]:
        """The exact top-k of each component's pool of shard rows, and how many rows were scored."""
        if self.compiled:
            return self._ranked(shard, rows, k, pools)
        out, scored = [], 0
        for j, pool in enumerate(pools):
            pos, scores = self._rank_pool(shard, rows, j, k, pool)
            out.append(self._top(shard, pos, scores, k))
            scored += pos.size
        return out, scored

    @staticmethod
    def _ranked(
        shard: ClassShard, rows: _QueryRows, k: int, pools: list[np.ndarray], **window: np.ndarray | None
    ) -> tuple[list[tuple[Match, ...]], int]:
        """The CPU path of fast and exact mode: one compiled call ranks every component of the class
        (its pool; with ``mask_pop``, also every row BitBound does not rule out)."""
        ranked = rank_pools(
            mask=shard.mask.numpy(),
            summary=shard.summary,
            columns=shard.columns,
            contexts=shard.context,
            blocks=shard.context_blocks,
            segment_ids=shard.segment_ids,
            pools=pools,
            query_mask=rows.mask.numpy(),
            query_summary=rows.summary,
            query_context=rows.context.numpy(),
            query_blocks=rows.context_blocks,
            query_cols=rows.present_cols,
            k=k,
            **window,
        )
        out = []
        for pos, sc in zip(ranked.positions, ranked.scores, strict=True):
            valid = pos >= 0
            out.append(
                tuple(
                    Match(int(shard.segment_ids[p]), int(shard.image_ids[p]), float(s[0]), float(s[1]), float(s[2]))
                    for p, s in zip(pos[valid], sc[valid], strict=True)
                )
            )
        return out, ranked.scored

    # 4. Full mode: exact on pixels, seeded by the grid
    def _full(
        self, query: Query, shard: ClassShard, rows: _QueryRows, options: RetrievalOptions, excluded: np.ndarray
    ) -> tuple[list[tuple[Match, ...]], int]:
        frames = self.pixel_frames()
        if "query_frames" not in query.cache:
            query.cache["query_frames"] = PixelFrames.from_query(query.label, query.segments, self.index.num_classes)
        qf = query.cache["query_frames"]
        seeds, _ = self._fast(shard, rows, max(options.k, SEEDS), options.candidates, excluded)
        if "sorted_ids" not in shard.extras:  # rows are in popcount order; rank_on_pixels wants ids sorted
            order = np.argsort(shard.segment_ids)
            shard.extras["sorted_ids"] = (shard.segment_ids[order], shard.image_ids[order])
        pool, pool_images = shard.extras["sorted_ids"]
        if excluded.size:
            pool = pool[~np.isin(pool_images, excluded)]
        out, scored = [], 0
        for j, i in enumerate(rows.ids):
            seed_ids = np.array([m.segment_id for m in seeds[j]], np.int64)
            ids, sc, n = rank_on_pixels(qf, i, frames, pool, seed_ids, options.k)
            scored += n
            out.append(
                tuple(
                    Match(int(sid), int(frames.image_id[sid]), float(v[0]), float(v[1]), float(v[2]))
                    for sid, v in zip(ids, sc, strict=True)
                )
            )
        return out, scored

    # 5. Exact mode
    def _exact(
        self, shard: ClassShard, rows: _QueryRows, k: int, excluded: np.ndarray
    ) -> tuple[list[tuple[Match, ...]], int]:
        """Top-k over the whole class: FAISS seeds set a floor ``t`` on the k-th best score,
        then only segments whose upper bound reaches ``t`` are looked at any closer."""
        # Seeds only set a first floor (the answer is exact whatever they are): no tie completion.
        seeds = self._candidates(shard, rows, max(4 * k, self.exact_seeds), excluded, tie_cap=1)
        if self.compiled:
            # One compiled call: the seeds, then every row BitBound leaves, each dropped at its first bound below t.
            allowed = ~np.isin(shard.image_ids, excluded) if excluded.size else None
            return self._ranked(shard, rows, k, seeds, mask_pop=shard.mask_pop, allowed=allowed)
        out, scored = [], 0
        for j, seed in enumerate(seeds):
            seed_scores = self._score(shard, rows, j, seed)
            best = np.sort(seed_scores[0])[::-1][:k]
            t = best[k - 1] if best.size >= k else -np.inf
            # BitBound: the popcount window, then popcounts and grid boxes bound each IoU.
            window = _popcount_window(shard.mask_pop, int(rows.mask_pop[j]), t)
            ub = _upper_bounds(shard, rows, j, window)
            pool = window.start + np.flatnonzero(ub >= t)
            pool = pool[~np.isin(pool, seed)]
            if excluded.size and pool.size:
                pool = pool[~np.isin(shard.image_ids[pool], excluded)]
            pos, scores = self._rank_pool(shard, rows, j, k, pool, best)
            all_pos = np.concatenate([seed, pos])
            all_scores = tuple(np.concatenate([a, b]) for a, b in zip(seed_scores, scores, strict=True))
            out.append(self._top(shard, all_pos, all_scores, k))
            scored += all_pos.size
        return out, scored

    def _rank_pool(
        self,
        shard: ClassShard,
        rows: _QueryRows,
        j: int,
        k: int,
        pool: np.ndarray,
        best: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Exactly score every segment of ``pool`` that could enter the top-k of query ``j``.

        ``best`` holds scores already found elsewhere (their k-th is a floor ``t``). First the
        exact mask IoU plus a per-block bound on the context IoU (~0.5 kB per segment) give an
        upper bound on each score; then exact contexts are scored in descending order of that
        bound, ``t`` rising as they are, until the bound falls below ``t``. Segments left out
        cannot reach the top-k, so the result equals scoring the whole pool.
        """
        best = np.zeros(0) if best is None else best
        t = best[k - 1] if best.size >= k else -np.inf
        empty = (np.zeros(0, np.int64), (np.zeros(0), np.zeros(0), np.zeros(0)))
        if pool.size == 0:
            return empty
        # 1. Exact mask IoU; context intersection <= sum over blocks of min(present counts).
        miou = iou64(self._mask_inter(shard, rows, j, pool), rows.mask_pop[j], shard.mask_pop[pool])
        ca, cb = rows.context_pop[j], shard.context_pop[pool]
        cap = np.minimum(shard.context_blocks[pool], rows.context_blocks[j]).sum(axis=1, dtype=np.int64)
        bound = miou + iou64(np.minimum(cap, np.minimum(ca, cb)), ca, cb)
        keep = bound >= t
        pool, miou, bound = pool[keep], miou[keep], bound[keep]
        # 2. Exact contexts, best bound first, until the bound falls below t.
        order = np.argsort(-bound, kind="stable")
        done = []
        for start in range(0, order.size, _CERTIFY_CHUNK):
            chunk = order[start : start + _CERTIFY_CHUNK]
            if bound[chunk[0]] < t:
                break
            ciou = iou64(self._context_inter(shard, rows, j, pool[chunk]), ca, shard.context_pop[pool[chunk]])
            score = miou[chunk] + ciou
            done.append((chunk, score, ciou))
            best = np.sort(np.concatenate([best, score]))[::-1][:k]
            if best.size >= k:
                t = max(t, best[k - 1])
        if not done:
            return empty
        idx = np.concatenate([d[0] for d in done])
        return pool[idx], (np.concatenate([d[1] for d in done]), miou[idx], np.concatenate([d[2] for d in done]))


#: Candidates whose exact context is scored at once while ranking a pool.
_CERTIFY_CHUNK = 256


def _excluded_count(shard: ClassShard, excluded: np.ndarray) -> int:
    if not excluded.size:
        return 0
    if "image_sorted" not in shard.extras:
        shard.extras["image_sorted"] = np.sort(shard.image_ids)
    s = shard.extras["image_sorted"]
    return int((np.searchsorted(s, excluded, side="right") - np.searchsorted(s, excluded, side="left")).sum())


def _popcount_window(mask_pop: np.ndarray, a: int, t: float) -> slice:
    """Rows whose mask popcount b can still reach score ``t``: context IoU <= 1, so we need
    min(a, b) / max(a, b) >= t - 1 (the BitBound), a contiguous range since rows are sorted."""
    r = t - 1.0
    if not np.isfinite(t) or r <= 0:
        return slice(0, mask_pop.size)
    lo = np.searchsorted(mask_pop, np.floor(a * r) - 1, side="left")
    hi = np.searchsorted(mask_pop, np.ceil(a / r) + 1, side="right")
    return slice(int(lo), int(hi))


def _box_overlap(q: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    dy = np.minimum(q[2], boxes[2]) - np.maximum(q[0], boxes[0])
    dx = np.minimum(q[3], boxes[3]) - np.maximum(q[1], boxes[1])
    return np.maximum(dy, 0) * np.maximum(dx, 0)


def _upper_bounds(shard: ClassShard, rows: _QueryRows, j: int, window: slice) -> np.ndarray:
    """Float64 upper bounds of the score of query ``j`` over ``window``.

    An intersection is at most the smaller set and at most the overlap of the two grid boxes;
    IoU grows with the intersection, so plugging that cap in bounds it from above.
    """
    a, ca = rows.mask_pop[j], rows.context_pop[j]
    b = shard.mask_pop[window]
    cb = shard.context_pop[window]
    im = np.minimum(np.minimum(a, b), _box_overlap(rows.mask_box[:, j], shard.mask_box[:, window]))
    ic = np.minimum(np.minimum(ca, cb), _box_overlap(rows.context_box[:, j], shard.context_box[:, window]))
    return iou64(im, a, b) + iou64(ic, ca, cb)
