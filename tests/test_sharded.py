"""Sharded retrieval in one process: the plan, and identity with the single engine in every mode.

The shards here are :class:`LocalShards` (plain calls); ``tests/test_sharded_cluster.py`` runs the
same engine on Dask workers, with faults.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import CFG, FRAME, NUM_CLASSES, blocky_layout, random_bank

from memory_bank import Bank
from memory_bank.candidate_index import CandidateConfig
from memory_bank.errors import OptionError
from retrieval_service.engine import RetrievalEngine, query_rows
from retrieval_service.index import SegmentIndex
from retrieval_service.query import prepare_query
from retrieval_service.shard_plan import plan_shards
from retrieval_service.shard_server import ArraysShardSource, BankShardSource
from retrieval_service.sharded import LocalShards, ShardedEngine, merge_top
from retrieval_service.types import RetrievalOptions

# Small IVF indexes, few probes and a low exact threshold: split classes take the three-step fast path.
CANDIDATES = CandidateConfig(ivf_min_segments=60, nprobe=3, lists_per_sqrt=1.0)
EXACT_BELOW = 30


@given(
    sizes=st.dictionaries(st.integers(0, 20), st.integers(1, 500), min_size=1, max_size=8),
    num_shards=st.integers(1, 5),
    max_part=st.one_of(st.none(), st.integers(1, 300)),
)
def test_plan_covers_every_row_once(sizes: dict[int, int], num_shards: int, max_part: int | None) -> None:
    plan = plan_shards(sizes, num_shards, max_part)
    assert len(plan.shards) == num_shards
    limit = max_part or -(-sum(sizes.values()) // num_shards)
    for c, n in sizes.items():
        parts = sorted((p for s in plan.shards for p in s.parts if p.class_id == c), key=lambda p: p.start)
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))  # contiguous, disjoint
        assert all(0 < p.size <= limit for p in parts)
        assert plan.split(c) == (len({s.shard_id for s in plan.shards if any(p.class_id == c for p in s.parts)}) > 1)
    loads = [s.segments for s in plan.shards]
    assert max(loads) - min(loads) <= limit  # LPT: no shard more than one part above another


def single_and_sharded(
    arrays: dict, num_shards: int, max_part: int | None, candidates: CandidateConfig
) -> tuple[RetrievalEngine, ShardedEngine]:
    index = SegmentIndex.from_arrays(**arrays, config=CFG, resolution=FRAME, num_classes=NUM_CLASSES)
    single = RetrievalEngine(index, candidates, exact_below=EXACT_BELOW)
    source = ArraysShardSource(**arrays, config=CFG, resolution=FRAME, num_classes=NUM_CLASSES)
    plan = plan_shards(source.class_sizes(), num_shards, max_part)
    shards = LocalShards(source, plan, candidates, EXACT_BELOW)
    return single, ShardedEngine(source, shards, candidate_config=candidates, exact_below=EXACT_BELOW)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    num_shards=st.integers(1, 4),
    max_part=st.sampled_from([None, 40, 90, 200]),
    tie_cap=st.integers(2, 4),
)
def test_identity_on_random_banks_and_layouts(seed: int, num_shards: int, max_part: int | None, tie_cap: int) -> None:
    """Same components, matches (ids, scores bit for bit) and seeded choices as one process."""
    arrays, _ = random_bank(seed, 60)
    config = CandidateConfig(ivf_min_segments=60, nprobe=3, lists_per_sqrt=1.0, tie_cap=tie_cap)
    single, sharded = single_and_sharded(arrays, num_shards, max_part, config)
    rng = np.random.default_rng(seed)
    for i in range(6):
        layout = blocky_layout(rng)
        for mode in ("fast", "exact"):
            options = RetrievalOptions(
                k=int(rng.integers(1, 6)),
                mode=mode,
                seed=i,
                candidates=int(rng.choice([2, 5, 12, 40])),
                exclude_images=tuple(int(v) for v in rng.choice(60, size=int(rng.integers(0, 3)), replace=False)),
            )
            want, got = single.retrieve(layout, options), sharded.retrieve(layout, options)
            assert got.components == want.components, (mode, options)
            assert got.bank_version == want.bank_version and got.mode == want.mode


def test_split_fast_classes_cut_tie_groups_like_one_process() -> None:
    """A bank where fast mode's tie groups are cut (tie_cap * k below the group): the protocol's step 2 matters."""
    arrays, _ = random_bank(1, 120)
    config = CandidateConfig(ivf_min_segments=60, nprobe=3, lists_per_sqrt=1.0, tie_cap=2)
    single, sharded = single_and_sharded(arrays, 3, 150, config)
    assert sum(sharded.plan.split(c) for c in range(NUM_CLASSES)) >= 3
    rng = np.random.default_rng(5)
    for i in range(25):
        layout = blocky_layout(rng)
        for candidates in (3, 8, 20):
            options = RetrievalOptions(k=3, seed=i, candidates=candidates)
            assert sharded.retrieve(layout, options).components == single.retrieve(layout, options).components


def test_without_the_global_cut_answers_differ() -> None:
    """The test above can fail: shards that each take their own fast-mode pool answer differently."""
    arrays, _ = random_bank(1, 120)
    config = CandidateConfig(ivf_min_segments=60, nprobe=3, lists_per_sqrt=1.0, tie_cap=2)
    single, sharded = single_and_sharded(arrays, 3, 150, config)
    rng = np.random.default_rng(5)
    differ = 0
    for _ in range(10):
        layout = blocky_layout(rng)
        options = RetrievalOptions(k=3, candidates=3)
        query = prepare_query(layout, NUM_CLASSES, CFG, FRAME)
        for comp in single.retrieve_query(query, options).components:
            if not comp.matches:
                continue
            rows = query_rows(query, [comp.component_id], CFG, torch.device("cpu"))
            own = [
                server.engine.rank_class(None, server.engine.index.shards[comp.class_id], rows, options, np.zeros(0))[
                    0
                ][0]
                for server in sharded.shards.servers.values()
                if comp.class_id in server.engine.index.shards
            ]
            differ += merge_top(own, 3) != comp.matches
    assert differ > 0


@pytest.fixture(scope="module")
def val_engines(val_bank: Bank) -> tuple[RetrievalEngine, ShardedEngine]:
    """The sample val bank in one process and over 3 shards that split every class of more than 10 segments."""
    single = RetrievalEngine.from_bank(val_bank, exact_below=8)
    source = BankShardSource.of(val_bank)
    plan = plan_shards(source.class_sizes(), 3, max_part=10)
    assert sum(plan.split(c) for c in plan.class_sizes) >= 3
    return single, ShardedEngine(source, LocalShards(source, plan, exact_below=8), exact_below=8)


@pytest.mark.parametrize("mode", ["fast", "exact", "full"])
def test_identity_on_the_val_layouts(val_bank: Bank, val_engines: tuple, mode: str) -> None:
    """Every sample val layout against the val bank (stored FAISS indexes, split classes), with seeds."""
    single, sharded = val_engines
    for i in range(val_bank.num_images):
        layout = np.asarray(val_bank.labels[i])
        for options in (
            RetrievalOptions(k=5, mode=mode, seed=i, candidates=16),
            RetrievalOptions(k=3, mode=mode, seed=7, exclude_images=(i,), candidates=16),
        ):
            want, got = single.retrieve(layout, options), sharded.retrieve(layout, options)
            assert got.components == want.components
            assert got.image_names == want.image_names and got.bank_version == want.bank_version


def test_pins_and_their_errors_match(val_bank: Bank, val_engines: tuple) -> None:
    single, sharded = val_engines
    layout = np.asarray(val_bank.labels[0])
    first = single.retrieve(layout, RetrievalOptions(k=2))
    comp = next(c for c in first.components if c.matches)
    same_class = np.flatnonzero(val_bank.column("class_id") == comp.class_id)
    pinned = int(same_class[-1])  # most likely not among its top 2: scored by the shard holding it
    options = RetrievalOptions(k=2, seed=3, pins={str(comp.component_id): pinned})
    assert sharded.retrieve(layout, options).components == single.retrieve(layout, options).components
    other = int(np.flatnonzero(val_bank.column("class_id") != comp.class_id)[0])
    for bad in ({str(comp.component_id): other}, {"999": pinned}, {str(comp.component_id): 10**9}):
        with pytest.raises(OptionError) as a:
            single.retrieve(layout, RetrievalOptions(pins=bad))
        with pytest.raises(OptionError) as b:
            sharded.retrieve(layout, RetrievalOptions(pins=bad))
        assert (a.value.kind, str(a.value)) == (b.value.kind, str(b.value))
