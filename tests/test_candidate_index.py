"""The bank's FAISS indexes: the indexer writes the indexes the engine loads, and loaded or built in
memory, retrieval is the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from memory_bank import Bank, open_bank
from memory_bank.candidate_index import (
    CandidateConfig,
    build_candidate_index,
    is_built_as,
    read_class_index,
    write_class_indexes,
)
from retrieval_service.engine import RetrievalEngine
from retrieval_service.index import SegmentIndex
from retrieval_service.types import RetrievalOptions

#: IVF indexes for every class of the 8-image sample bank with at least 20 segments.
SMALL_IVF = CandidateConfig(ivf_min_segments=20, use_gpu=False)


def _answers(engine: RetrievalEngine, bank: Bank) -> list:
    """Matches and exactly scored counts over the bank's own layouts, several modes and sizes."""
    out = []
    for image_id in range(bank.num_images):
        layout = np.asarray(bank.labels[image_id])
        for options in (
            RetrievalOptions(k=1, mode="fast", candidates=8),
            RetrievalOptions(k=5, mode="fast", candidates=64, exclude_images=(image_id,)),
            RetrievalOptions(k=3, mode="exact"),
        ):
            r = engine.retrieve(layout, options)
            out.append((r.scored, [[(m.segment_id, m.score) for m in c.matches] for c in r.components]))
    return out


def _sources(engine: RetrievalEngine) -> set[str]:
    engine.warm_up()
    return {s.extras["faiss_source"] for s in engine.index.shards.values()}


def test_engine_loads_the_banks_indexes_and_retrieves_as_if_it_built_them(val_bank: Bank) -> None:
    config = CandidateConfig(use_gpu=False)
    loaded = RetrievalEngine.from_bank(val_bank, candidate_config=config)
    built = RetrievalEngine(SegmentIndex.from_bank(val_bank), config)  # no bank: nothing to load
    assert _sources(loaded) == {"bank"} and _sources(built) == {"built"}
    assert _answers(loaded, val_bank) == _answers(built, val_bank)


def test_ivf_indexes_are_written_as_configured_and_loaded(val_bank_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "bank"
    shutil.copytree(val_bank_path, root)
    bank = open_bank(root)
    coarse, class_id = np.asarray(bank.codes["coarse"][:]), bank.column("class_id")
    write_class_indexes(bank.path, coarse, class_id, bank.column("mask_popcount"), len(bank.classes), SMALL_IVF)
    counts = np.bincount(class_id, minlength=len(bank.classes))
    assert (counts >= 20).any() and (counts[counts > 0] < 20).any()  # both kinds are exercised
    for c in np.flatnonzero(counts):
        index = read_class_index(bank.faiss_index_path(int(c)), SMALL_IVF)
        assert is_built_as(index, int(counts[c]), SMALL_IVF)
        inner = faiss.downcast_IndexBinary(index.index)
        assert isinstance(inner, faiss.IndexBinaryIVF) == (counts[c] >= 20)
        assert sorted(faiss.vector_to_array(index.id_map)) == np.flatnonzero(class_id == c).tolist()
    loaded = RetrievalEngine.from_bank(bank, candidate_config=SMALL_IVF)
    built = RetrievalEngine(SegmentIndex.from_bank(bank), SMALL_IVF)
    assert _sources(loaded) == {"bank"} and _sources(built) == {"built"}
    assert _answers(loaded, bank) == _answers(built, bank)
    # An engine configured for flat indexes does not take the IVF ones: it builds its own.
    flat = RetrievalEngine.from_bank(bank, candidate_config=CandidateConfig(use_gpu=False))
    assert _sources(flat) == {"bank", "built"}


def test_a_shard_of_other_segments_builds_its_own_index(val_bank: Bank) -> None:
    keep = np.arange(val_bank.num_segments) % 2 == 0  # half of every class
    codes = val_bank.codes
    index = SegmentIndex.from_arrays(
        class_id=val_bank.column("class_id")[keep],
        image_id=val_bank.column("image_id")[keep],
        mask=np.asarray(codes["mask"][:])[keep],
        context=val_bank.context_rows()[keep],
        coarse=np.asarray(codes["coarse"][:])[keep],
        segment_ids=np.flatnonzero(keep),
        config=val_bank.config,
        resolution=val_bank.resolution,
        num_classes=len(val_bank.classes),
        version=val_bank.version,
    )
    engine = RetrievalEngine(index, CandidateConfig(use_gpu=False), bank=val_bank)
    assert _sources(engine) == {"built"}


def test_ivf_training_does_not_depend_on_the_thread_count() -> None:
    # Few distinct sparse codes, like small segments' coarse codes: parallel k-means sums differ here.
    rng = np.random.default_rng(0)
    codes = np.packbits(rng.random((60, 448)) < 0.03, axis=1)[rng.integers(0, 60, 1500)]
    before = faiss.omp_get_max_threads()
    centroids = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        try:
            index = build_candidate_index(codes, SMALL_IVF)
            assert faiss.omp_get_max_threads() == threads  # restored after training
        finally:
            faiss.omp_set_num_threads(before)
        quantizer = faiss.downcast_IndexBinary(faiss.downcast_IndexBinary(index.index).quantizer)
        centroids.append(faiss.vector_to_array(quantizer.xb))
    np.testing.assert_array_equal(*centroids)


@given(
    n=st.integers(1, 10**8),
    nprobe=st.integers(1, 64),
    candidates=st.integers(1, 2048),
    grow_from=st.integers(1, 10**6),
    growth=st.floats(0, 1),
)
def test_large_classes_probe_and_take_more(n: int, nprobe: int, candidates: int, grow_from: int, growth: float) -> None:
    config = CandidateConfig(nprobe=nprobe, grow_from=grow_from, nprobe_growth=growth, candidates_growth=growth / 2)
    fixed = CandidateConfig(nprobe=nprobe, grow_from=None)
    assert fixed.nprobe_for(n) == nprobe and fixed.candidates_for(n, candidates) == candidates
    if n <= grow_from:
        assert config.nprobe_for(n) == nprobe and config.candidates_for(n, candidates) == candidates
    else:
        assert config.nprobe_for(n) == round(nprobe * (n / grow_from) ** growth) >= nprobe
        assert config.candidates_for(n, candidates) == round(candidates * (n / grow_from) ** (growth / 2)) >= candidates
        assert config.nprobe_for(2 * n) >= config.nprobe_for(n)


def test_indexes_built_and_loaded_probe_as_configured_for_their_size() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(400, 8), dtype=np.uint8)
    config = CandidateConfig(ivf_min_segments=60, lists_per_sqrt=1.0, nprobe=2, grow_from=100, use_gpu=False)
    built = build_candidate_index(codes, config)
    assert faiss.downcast_IndexBinary(built.index).nprobe == 4  # 2 * (400 / 100) ** 0.5
    data = faiss.serialize_index_binary(built).tobytes()
    loaded = read_class_index(data, CandidateConfig(ivf_min_segments=60, lists_per_sqrt=1.0, nprobe=3, grow_from=None))
    assert faiss.downcast_IndexBinary(loaded.index).nprobe == 3
    assert faiss.downcast_IndexBinary(read_class_index(data, config).index).nprobe == 4
