"""One shard of a bank version: its rows, loaded from the shared bank, and what it answers.

A :class:`ShardServer` holds the same :class:`~retrieval_service.engine.RetrievalEngine` as one
process does, over a :class:`~retrieval_service.index.SegmentIndex` of only its parts
(:mod:`retrieval_service.shard_plan`). A whole class ranks as in one process, with the same
FAISS index (the bank's stored one, or one built the same way). Each part of a split class
gets the class's own index restricted to its rows (:mod:`retrieval_service.split_search`),
which ``fast`` mode's three-step protocol needs; ``exact`` and ``full`` are exact on any rows.

Shards load from a :class:`ShardSource`: a bank (a local path or an fsspec URL), or arrays.
It is picklable and opened where the shard runs, so a worker reads only from the shared bank.
Every call names the bank version it is for, and a shard of another version refuses it.
"""

from __future__ import annotations

import logging
import pickle
import resource
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memory_bank import Bank, SegmentConfig, open_bank, popcount
from memory_bank.candidate_index import CandidateConfig, shard_order
from memory_bank.context_codes import BoxedContexts
from memory_bank.errors import UnavailableError
from retrieval_service.candidates import class_candidate_index
from retrieval_service.engine import EXACT_BELOW, RetrievalEngine, _QueryRows
from retrieval_service.index import SegmentIndex
from retrieval_service.query import Query
from retrieval_service.shard_plan import ShardSpec
from retrieval_service.split_search import SplitIndex, nearest, restrict_index, tie_group
from retrieval_service.types import Match, RetrievalOptions

log = logging.getLogger(__name__)

#: Requests whose fast-mode state (nearest rows, tie groups) a shard keeps between steps.
_PENDING = 256


# 1. Where shards load from


@dataclass(frozen=True)
class SourceFrame:
    """What a bank version is, without its codes."""

    version: str
    num_classes: int
    config: SegmentConfig
    resolution: tuple[int, int]


class ShardSource(ABC):
    """A bank version that shards load their rows from; picklable, opened where it is used."""

    @abstractmethod
    def frame(self) -> SourceFrame:
        """Version, classes, segment config and resolution."""

    @abstractmethod
    def column(self, name: str) -> np.ndarray:
        """A per-segment column over all segments, in id order: ``class_id``, ``image_id`` or ``mask_popcount``."""

    @abstractmethod
    def codes(self, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, BoxedContexts]:
        """Fine masks, coarse codes and boxed contexts of ``segment_ids`` (ascending), in that order."""

    def coarse(self, segment_ids: np.ndarray) -> np.ndarray:
        """Coarse codes of ``segment_ids`` (any order), in that order."""
        order = np.argsort(segment_ids)
        sorted_codes = self.codes(segment_ids[order])[1]
        out = np.empty_like(sorted_codes)
        out[order] = sorted_codes
        return out

    def bank(self) -> Bank | None:
        """The bank itself, when there is one (stored FAISS indexes, ``full`` mode)."""
        return None

    def class_rows(self, class_id: int) -> np.ndarray:
        """The class's segment ids in shard row order (mask popcount ascending, ties by id)."""
        ids = np.flatnonzero(self.column("class_id") == class_id).astype(np.int64)
        return ids[shard_order(self.column("mask_popcount")[ids])]

    def class_sizes(self) -> dict[int, int]:
        """Segments per class (classes with none are left out)."""
        counts = np.bincount(self.column("class_id").astype(np.int64), minlength=self.frame().num_classes)
        return {int(c): int(n) for c, n in enumerate(counts) if n}


class BankShardSource(ShardSource):
    """A published bank version at a local path or an fsspec URL (``s3://bucket/prefix``).

    ``where`` is the bank's root (``version`` is then opened) or the version's own directory.
    """

    def __init__(self, where: str | Path, version: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.where = str(where)
        self.version = version
        self.storage_options = dict(storage_options) if storage_options else None
        self._bank: Bank | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, bank: Bank, storage_options: Mapping[str, Any] | None = None) -> BankShardSource:
        """The source of an open bank version (by its version directory)."""
        source = cls(bank.path, bank.version, storage_options)
        source._bank = bank
        return source

    def __getstate__(self) -> dict[str, Any]:
        return {"where": self.where, "version": self.version, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["where"], state["version"], state["storage_options"])  # type: ignore[misc]

    def bank(self) -> Bank:
        with self._lock:
            if self._bank is None:
                bank = open_bank(self.where, storage_options=self.storage_options)
                if bank.version != self.version:  # a bank root whose CURRENT moved on
                    bank = open_bank(self.where, self.version, storage_options=self.storage_options)
                self._bank = bank
        return self._bank

    def frame(self) -> SourceFrame:
        b = self.bank()
        return SourceFrame(b.version, len(b.classes), b.config, b.resolution)

    def column(self, name: str) -> np.ndarray:
        return self.bank().column(name)

    def codes(self, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, BoxedContexts]:
        b = self.bank()
        ids = np.asarray(segment_ids, np.int64)
        mask = np.asarray(b.codes["mask"].oindex[ids])
        coarse = np.asarray(b.codes["coarse"].oindex[ids])
        return mask, coarse, b.context_codes().take(ids)

    def coarse(self, segment_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(segment_ids, np.int64)
        order = np.argsort(ids)
        out = np.empty((ids.size, self.bank().codes["coarse"].shape[1]), np.uint8)
        out[order] = np.asarray(self.bank().codes["coarse"].oindex[ids[order]])
        return out


class ArraysShardSource(ShardSource):
    """Code arrays in memory, one row per segment (ids = row numbers); contexts dense."""

    def __init__(
        self,
        *,
        class_id: np.ndarray,
        image_id: np.ndarray,
        mask: np.ndarray,
        coarse: np.ndarray,
        context: np.ndarray,
        config: SegmentConfig,
        resolution: tuple[int, int],
        num_classes: int,
        version: str = "",
    ) -> None:
        self.arrays = {"class_id": class_id, "image_id": image_id, "mask": mask, "coarse": coarse, "context": context}
        self._frame = SourceFrame(version, num_classes, config, tuple(resolution))  # type: ignore[arg-type]

    def frame(self) -> SourceFrame:
        return self._frame

    def column(self, name: str) -> np.ndarray:
        if name == "mask_popcount":
            return popcount(self.arrays["mask"])
        return np.asarray(self.arrays[name])

    def codes(self, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, BoxedContexts]:
        a = self.arrays
        contexts = BoxedContexts.from_rows(np.asarray(a["context"])[segment_ids], self._frame.config.fine_grid)
        return np.asarray(a["mask"])[segment_ids], np.asarray(a["coarse"])[segment_ids], contexts

    def coarse(self, segment_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.arrays["coarse"])[segment_ids]


# 2. What a shard is asked


@dataclass(frozen=True)
class RankTask:
    """Rank components of one class over this shard's rows of it, in ``options.mode``."""

    class_id: int
    rows: _QueryRows
    options: RetrievalOptions
    query: Query | None = None  # full mode scores the query's pixels


@dataclass(frozen=True)
class ProbeTask:
    """Fast mode on a split class, step 1: the ``probe`` nearest codes of each component."""

    class_id: int
    coarse: np.ndarray  # (q, bytes) the components' coarse codes
    probe: int


@dataclass(frozen=True)
class GroupTask:
    """Step 2: scan keys of the first ``room`` codes at ``distance`` from component ``j``."""

    class_id: int
    j: int
    coarse: np.ndarray  # (bytes,)
    distance: float
    room: int


@dataclass(frozen=True)
class PoolTask:
    """Step 3: rank each component's part of the pool: nearest rows within ``distance`` (below it
    when tied, then the first ``keep`` of the tie group)."""

    class_id: int
    rows: _QueryRows
    k: int
    excluded: np.ndarray
    distances: list[float]
    tied: list[bool]
    keep: list[int]


@dataclass
class _Pending:
    nearest: tuple[list[np.ndarray], list[np.ndarray]]
    groups: dict[int, np.ndarray] = field(default_factory=dict)


class ShardServer:
    """One shard: its rows of a bank version and the engine that ranks them."""

    def __init__(
        self,
        source: ShardSource,
        spec: ShardSpec,
        candidate_config: CandidateConfig | None = None,
        exact_below: int = EXACT_BELOW,
    ) -> None:
        start = time.perf_counter()
        self.spec = spec
        frame = source.frame()
        self.version = frame.version
        # 1. The segment ids of every part, from the class's rows in shard order.
        class_id = source.column("class_id")
        class_rows = {c: source.class_rows(c) for c in spec.class_ids}
        mine: dict[int, np.ndarray] = {}
        for c in spec.class_ids:
            rows = class_rows[c]
            parts = [p for p in spec.parts if p.class_id == c]
            if rows.size != parts[0].class_size:
                raise ValueError(f"{spec.name}: class {c} has {rows.size} segments, the plan {parts[0].class_size}")
            mine[c] = np.sort(np.concatenate([np.arange(p.start, p.stop) for p in parts]))  # class rows held
        ids = np.sort(np.concatenate([class_rows[c][r] for c, r in mine.items()])) if mine else np.zeros(0, np.int64)
        # 2. Their codes, as one process would index them.
        mask, coarse, contexts = source.codes(ids)
        index = SegmentIndex.from_arrays(
            class_id=class_id[ids],
            image_id=source.column("image_id")[ids],
            mask=mask,
            coarse=coarse,
            contexts=contexts,
            segment_ids=ids,
            config=frame.config,
            resolution=frame.resolution,
            num_classes=frame.num_classes,
            version=frame.version,
        )
        self.engine = RetrievalEngine(index, candidate_config, bank=source.bank(), exact_below=exact_below)
        # 3. Split classes: the class's candidate index, cut to this shard's rows.
        self.split: dict[int, SplitIndex] = {}
        bank = source.bank()
        for c, held in mine.items():
            if held.size == class_rows[c].size:
                continue
            rows = class_rows[c]
            full, origin = class_candidate_index(
                c, rows, lambda rows=rows: source.coarse(rows), self.engine.candidate_config, bank
            )
            self.split[c] = restrict_index(full, held)
            shard = index.shards[c]
            shard.extras["faiss"], shard.extras["faiss_source"] = self.split[c].index, origin
        self.engine.warm_up()
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self.load_seconds = time.perf_counter() - start
        log.info(
            "%s: %d segments of version %s loaded in %.1f s", spec.describe(), ids.size, self.version, self.load_seconds
        )

    # Calls (each names its version)
    def pickled(self, method: str, args: bytes) -> bytes:
        """``method(*args)`` with arguments and answer pickled: one buffer each way is much cheaper
        for Dask to send than the objects (which it serialises one by one, with a header each).

        The answer is ``(None, answer, seconds spent here)``, or ``(error, None, seconds)`` when the
        method raised: an error of the shard travels in the answer, so that any exception the
        caller sees is the transport's (a lost worker)."""
        start = time.perf_counter()
        try:
            answer, error = getattr(self, method)(*pickle.loads(args)), None
        except Exception as e:
            answer, error = None, e
        return pickle.dumps((error, answer, time.perf_counter() - start), protocol=pickle.HIGHEST_PROTOCOL)

    def describe(self) -> dict[str, Any]:
        """Version, parts, bytes held by the index, load time, and the process's RSS: now (all of it,
        and the anonymous part, without page cache of memory-mapped files) and at its peak."""
        return {
            "rss_bytes": _status_bytes("VmRSS"),
            "rss_anon_bytes": _status_bytes("RssAnon"),
            "version": self.version,
            "shard": self.spec.describe(),
            "segments": self.engine.index.num_segments,
            "index_bytes": self.engine.index.nbytes(),
            "load_seconds": self.load_seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    def rank(self, version: str, token: str, tasks: list[RankTask | ProbeTask]) -> list[Any]:
        """Answer whole-class ranking and fast-mode probes: per task, ``(matches, scored)`` or distances."""
        self._check(version)
        out: list[Any] = []
        for task in tasks:
            shard = self.engine.index.shards[task.class_id]
            if isinstance(task, ProbeTask):
                found = nearest(self.split[task.class_id], task.coarse, task.probe)
                self._keep((token, task.class_id), _Pending(found))
                out.append(found[1])
            else:
                excluded = np.unique(np.asarray(task.options.exclude_images, np.int64))
                out.append(self.engine.rank_class(task.query, shard, task.rows, task.options, excluded))
        return out

    def group(self, version: str, token: str, tasks: list[GroupTask]) -> list[np.ndarray]:
        """Fast mode, step 2: per task, the scan keys of the first ``room`` codes of the tie group."""
        self._check(version)
        out = []
        for task in tasks:
            pending = self._pending_for(token, task.class_id)
            rows, keys = tie_group(self.split[task.class_id], task.coarse, task.distance)
            pending.groups[task.j] = rows
            out.append(keys[: task.room])
        return out

    def pool(self, version: str, token: str, tasks: list[PoolTask]) -> list[tuple[list[tuple[Match, ...]], int]]:
        """Fast mode, step 3: per task, the exact top-k of each component's part of the pool."""
        self._check(version)
        out = []
        for task in tasks:
            with self._lock:
                pending = self._pending.pop((token, task.class_id), None)
            if pending is None:
                raise UnavailableError(f"{self.spec.name} lost the state of request {token}", kind="shard_unavailable")
            shard = self.engine.index.shards[task.class_id]
            near_rows, near_dist = pending.nearest
            pools = []
            for j in range(len(task.distances)):
                d, rows = near_dist[j], near_rows[j]
                if task.tied[j]:
                    group = pending.groups.get(j, np.zeros(0, np.int64))[: task.keep[j]]
                    pool = np.concatenate([rows[d < task.distances[j]], group])
                else:
                    pool = rows[d <= task.distances[j]]
                if task.excluded.size:
                    pool = pool[~np.isin(shard.image_ids[pool], task.excluded)]
                pools.append(pool.astype(np.int64))
            out.append(self.engine.rank_pools(shard, task.rows, task.k, pools))
        return out

    def score(self, version: str, class_id: int, rows: _QueryRows, segment_id: int) -> Match | None:
        """The exact match of one component with ``segment_id``, if this shard holds it."""
        self._check(version)
        shard = self.engine.index.shards.get(class_id)
        if shard is None:
            return None
        at = np.flatnonzero(shard.segment_ids == segment_id)
        return self.engine.score_segment(shard, rows, int(at[0])) if at.size else None

    # State between the steps of one request
    def _check(self, version: str) -> None:
        if version != self.version:
            raise UnavailableError(
                f"{self.spec.name} holds bank version {self.version}, not {version}", kind="shard_unavailable"
            )

    def _keep(self, key: tuple[str, int], pending: _Pending) -> None:
        with self._lock:
            self._pending[key] = pending
            while len(self._pending) > _PENDING:  # requests abandoned between steps (a timeout elsewhere)
                self._pending.popitem(last=False)

    def _pending_for(self, token: str, class_id: int) -> _Pending:
        with self._lock:
            pending = self._pending.get((token, class_id))
        if pending is None:
            raise UnavailableError(f"{self.spec.name} lost the state of request {token}", kind="shard_unavailable")
        return pending


def _status_bytes(field: str) -> int | None:
    """A size from /proc/self/status (``VmRSS``, ``RssAnon``), None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
