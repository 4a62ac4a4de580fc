"""Sharded retrieval: one bank version over several shards, with the single process's answers.

:class:`ShardedEngine` is a :class:`~retrieval_service.engine.LayoutEngine`: it cuts and codes
the layout, gives components their statuses, draws the seeded choice and applies pins with the
same code as :class:`~retrieval_service.engine.RetrievalEngine`. Only the ranking of each class
differs: the components of a class go to the shards that hold it
(:mod:`retrieval_service.shard_plan`), and their top-k lists are merged by score, ties to the
lower segment id, the order every ranking of the engine uses. The top-k of a union of disjoint
sets is the top-k of their top-k lists, so the merge is exact whenever each shard's list is:

- a class held whole by one shard ranks there exactly as in one process;
- ``exact`` and ``full`` are exact over any set of rows; so is ``fast`` on a class of at most
  ``exact_below`` segments, which one process scores exactly too (decided on the class's size,
  not the part's);
- ``fast`` on a larger split class ranks the pool one process would take, found with the class's
  own FAISS index in three steps (:mod:`retrieval_service.split_search`).

Shards are reached through :class:`ShardCalls`: :class:`LocalShards` in this process (tests, and a
reference) or :class:`retrieval_service.shard_cluster.DaskShards` on Dask workers. A call that
cannot be answered raises :class:`~memory_bank.errors.UnavailableError` (503) naming the shard:
no answer is ever made from some shards only.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from memory_bank import Bank, SegmentConfig
from memory_bank.candidate_index import CandidateConfig
from retrieval_service.engine import EXACT_BELOW, LayoutEngine, _QueryRows
from retrieval_service.query import Query
from retrieval_service.shard_plan import ShardPlan
from retrieval_service.shard_server import (
    GroupTask,
    PoolTask,
    ProbeTask,
    RankTask,
    ShardServer,
    ShardSource,
)
from retrieval_service.split_search import cut_distance, group_cut, search_sizes
from retrieval_service.types import Match, RetrievalOptions

log = logging.getLogger(__name__)


class ShardCalls(Protocol):
    """How the coordinator reaches the shards of one bank version."""

    plan: ShardPlan

    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """``ShardServer.<method>(*args[s])`` on every shard ``s`` of ``args`` at once, their answers by shard;
        :class:`~memory_bank.errors.UnavailableError` naming any shard that did not answer."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """Each shard's :meth:`ShardServer.describe` (and where it runs)."""
        ...


@dataclass(eq=False, repr=False)  # a live set of shard servers: identity equality, the object repr
class LocalShards:
    """Every shard of a plan in this process (what :class:`~retrieval_service.shard_cluster.DaskShards` is on Dask)."""

    source: ShardSource
    plan: ShardPlan
    candidate_config: CandidateConfig | None = None
    exact_below: int = EXACT_BELOW

    def __post_init__(self) -> None:
        self.servers = {
            s.shard_id: ShardServer(self.source, s, self.candidate_config, self.exact_below)
            for s in self.plan.shards
            if s.parts
        }

    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        return {s: getattr(self.servers[s], method)(*a) for s, a in args.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [server.describe() for server in self.servers.values()]


def merge_top(lists: list[tuple[Match, ...]], k: int) -> tuple[Match, ...]:
    """The top ``k`` of several shards' top-k lists of one component: score descending, then segment id."""
    return tuple(sorted((m for ms in lists for m in ms), key=lambda m: (-m.score, m.segment_id))[:k])


class ShardedEngine(LayoutEngine):
    """Retrieval over the shards of one bank version (see the module docstring)."""

    def __init__(
        self,
        source: ShardSource,
        shards: ShardCalls,
        *,
        candidate_config: CandidateConfig | None = None,
        exact_below: int = EXACT_BELOW,
    ) -> None:
        """``candidate_config`` and ``exact_below`` must be the shards' (they decide the same things here)."""
        frame = source.frame()
        self.frame = frame
        self.shards = shards
        self.plan = shards.plan
        self.bank: Bank | None = source.bank()
        self.candidate_config = candidate_config or CandidateConfig()
        self.exact_below = exact_below
        class_id = source.column("class_id")
        self._class_of = class_id.astype(np.int16)  # segment id -> class, for pins
        # Fast mode asks split classes for as many more candidates as the request excludes segments.
        image_id = source.column("image_id")
        self._split_images = {c: np.sort(image_id[class_id == c]) for c in self.plan.class_sizes if self.plan.split(c)}
        fast_split = [c for c in self._split_images if self.plan.class_sizes[c] > exact_below]
        if fast_split and self.candidate_config.tie_cap <= 1:
            raise ValueError(f"classes {fast_split} are split between shards: fast mode needs tie_cap > 1 for them")

    # LayoutEngine hooks
    @property
    def version(self) -> str:
        return self.frame.version

    def layout_frame(self) -> tuple[int, SegmentConfig, tuple[int, int], torch.device]:
        f = self.frame
        return f.num_classes, f.config, f.resolution, torch.device("cpu")

    def has_class(self, class_id: int) -> bool:
        return class_id in self.plan.class_sizes

    def warm_up(self) -> float:
        """Nothing to do: each shard warms its engine when it loads."""
        return 0.0

    def _segment_class(self, segment_id: int) -> int:
        return int(self._class_of[segment_id]) if segment_id < self._class_of.size else -1

    def _score_pin(self, query: Query, rows: _QueryRows, class_id: int, segment_id: int) -> Match:
        holders = self.plan.holders(class_id)
        got = self.shards.call("score", {s: (self.version, class_id, rows, segment_id) for s in holders})
        return next(m for m in got.values() if m is not None)

    def _rank_classes(
        self, query: Query, rows: _QueryRows, by_class: dict[int, list[int]], options: RetrievalOptions
    ) -> tuple[dict[int, tuple[Match, ...]], int]:
        excluded = np.unique(np.asarray(options.exclude_images, np.int64))
        token = uuid.uuid4().hex
        tasks: dict[int, list[RankTask | ProbeTask]] = defaultdict(list)
        ranked: list[tuple[int, list[int], list[tuple[int, int]]]] = []  # class, comps, (shard, task index)
        probed: list[tuple[int, list[int], _QueryRows, int, int, list[tuple[int, int]]]] = []
        start = 0
        # 1. One call per shard: whole classes and exact parts are answered, split fast classes probed.
        for c, comps in by_class.items():
            part = rows.take(list(range(start, start + len(comps))))
            start += len(comps)
            holders = self.plan.holders(c)
            size = self.plan.class_sizes[c]
            at = [(s, len(tasks[s])) for s in holders]
            if len(holders) > 1 and options.mode == "fast" and size > self.exact_below:
                count = max(self.candidate_config.candidates_for(size, options.candidates), options.k)
                k, probe = search_sizes(count + self._excluded(c, excluded), size)
                for s in holders:
                    tasks[s].append(ProbeTask(c, part.coarse, probe))
                probed.append((c, comps, part, k, probe, at))
                continue
            opts = options
            if len(holders) > 1 and options.mode == "fast":  # the class is small enough to score exactly
                opts = options.model_copy(update={"mode": "exact"})
            task = RankTask(c, part, opts, query if options.mode == "full" else None)
            for s in holders:
                tasks[s].append(task)
            ranked.append((c, comps, at))
        answers = self.shards.call("rank", {s: (self.version, token, t) for s, t in tasks.items()})
        found: dict[int, tuple[Match, ...]] = {}
        scored = 0
        for _, comps, at in ranked:
            per_shard = [answers[s][i] for s, i in at]
            scored += sum(n for _, n in per_shard)
            for j, comp in enumerate(comps):
                found[comp] = merge_top([matches[j] for matches, _ in per_shard], options.k)
        if probed:
            more, n = self._fast_split(token, probed, answers, options, excluded)
            found.update(more)
            scored += n
        return found, scored

    def _fast_split(
        self,
        token: str,
        probed: list[tuple[int, list[int], _QueryRows, int, int, list[tuple[int, int]]]],
        answers: dict[int, list[Any]],
        options: RetrievalOptions,
        excluded: np.ndarray,
    ) -> tuple[dict[int, tuple[Match, ...]], int]:
        """Steps 2 and 3 of fast mode on split classes (:mod:`retrieval_service.split_search`)."""
        tie_cap = self.candidate_config.tie_cap
        cuts = {}
        groups: dict[int, list[GroupTask]] = defaultdict(list)
        group_at: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for c, comps, part, k, probe, at in probed:
            for j in range(len(comps)):
                cut = cut_distance([answers[s][i][j] for s, i in at], k, probe, tie_cap)
                cuts[c, j] = cut
                if cut.tied:
                    group_at[c, j] = [(s, len(groups[s])) for s, _ in at]
                    for s, _ in at:
                        groups[s].append(GroupTask(c, j, part.coarse[j], cut.distance, cut.group_room))
        keep: dict[tuple[int, int, int], int] = {}
        if groups:
            keys = self.shards.call("group", {s: (self.version, token, g) for s, g in groups.items()})
            for (c, j), where in group_at.items():
                counts = group_cut([keys[s][i] for s, i in where], cuts[c, j].group_room)
                for (s, _), n in zip(where, counts, strict=True):
                    keep[s, c, j] = n
        pools: dict[int, list[PoolTask]] = defaultdict(list)
        for c, comps, part, _, _, at in probed:
            n = len(comps)
            distances = [cuts[c, j].distance for j in range(n)]
            tied = [cuts[c, j].tied for j in range(n)]
            for s, _ in at:
                counts = [keep.get((s, c, j), 0) for j in range(n)]
                pools[s].append(PoolTask(c, part, options.k, excluded, distances, tied, counts))
        ranked = self.shards.call("pool", {s: (self.version, token, p) for s, p in pools.items()})
        found: dict[int, tuple[Match, ...]] = {}
        scored = 0
        for index, (_, comps, _, _, _, at) in enumerate(probed):
            per_shard = [ranked[s][_position(pools[s], probed[index][0])] for s, _ in at]
            scored += sum(n for _, n in per_shard)
            for j, comp in enumerate(comps):
                found[comp] = merge_top([matches[j] for matches, _ in per_shard], options.k)
        return found, scored

    def _excluded(self, class_id: int, excluded: np.ndarray) -> int:
        """Segments of the (split) class in excluded images: one process asks FAISS for that many more."""
        if not excluded.size:
            return 0
        s = self._split_images[class_id]
        return int((np.searchsorted(s, excluded, side="right") - np.searchsorted(s, excluded, side="left")).sum())

    def describe(self) -> list[dict[str, Any]]:
        """Each shard's description (version, parts, bytes, load time, peak RSS, where it runs)."""
        return self.shards.describe()


def _position(tasks: list[PoolTask], class_id: int) -> int:
    return next(i for i, t in enumerate(tasks) if t.class_id == class_id)
