"""The retrieval engine against the brute-force reference, and its options."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_bank import IGNORE, Bank, LayoutError, SegmentConfig, encode_segments, extract_segments
from retrieval_service.engine import RetrievalEngine
from retrieval_service.index import SegmentIndex
from retrieval_service.query import prepare_query
from retrieval_service.reference import brute_force_topk
from retrieval_service.types import RetrievalOptions, Status

CFG = SegmentConfig(min_area=4, fine_grid=(12, 16), coarse_grids=((6, 8),))
FRAME = (36, 48)
NUM_CLASSES = 5


def blocky_layout(rng: np.random.Generator) -> np.ndarray:
    """A random layout of rectangles-ish regions with some unlabelled pixels."""
    coarse = rng.integers(0, NUM_CLASSES, size=(rng.integers(2, 7), rng.integers(2, 9)))
    label = np.kron(coarse, np.ones((FRAME[0] // coarse.shape[0] + 1, FRAME[1] // coarse.shape[1] + 1), np.int64))
    label = label[: FRAME[0], : FRAME[1]].astype(np.uint8)
    noise = rng.random(FRAME) < 0.03
    label[noise] = rng.integers(0, NUM_CLASSES, noise.sum())
    label[rng.random(FRAME) < 0.02] = IGNORE
    return label


def random_bank(seed: int, images: int) -> tuple[dict, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"class_id": [], "image_id": [], "mask": [], "context": [], "coarse": []}
    layouts = []
    for i in range(images):
        label = blocky_layout(rng)
        seg = extract_segments(label, NUM_CLASSES, CFG)
        codes = encode_segments(label, seg, NUM_CLASSES, CFG)
        layouts.append(label)
        parts["class_id"].append(seg.class_id)
        parts["image_id"].append(np.full(len(seg), i, np.int32))
        parts["mask"].append(codes.mask)
        parts["context"].append(codes.context)
        parts["coarse"].append(codes.coarse)
    return {k: np.concatenate(v) for k, v in parts.items()}, layouts


def engine_for(arrays: dict) -> RetrievalEngine:
    index = SegmentIndex.from_arrays(**arrays, config=CFG, resolution=FRAME, num_classes=NUM_CLASSES)
    return RetrievalEngine(index)


def assert_equals_brute_force(engine: RetrievalEngine, arrays: dict, label: np.ndarray, k: int, **opts) -> int:
    idx = engine.index
    query = prepare_query(label, idx.num_classes, idx.config, idx.resolution)
    result = engine.retrieve(label, RetrievalOptions(k=k, mode="exact", **opts))
    exclude = np.asarray(opts.get("exclude_images", []), np.int64)
    checked = 0
    for comp in result.components:
        if comp.status is not Status.OK:
            continue
        ids = np.flatnonzero((arrays["class_id"] == comp.class_id) & ~np.isin(arrays["image_id"], exclude))
        i = comp.component_id
        want_ids, want_scores, want_m, want_c = brute_force_topk(
            query.codes.mask[i], query.codes.context[i], arrays["mask"][ids], arrays["context"][ids], ids, k
        )
        assert [m.segment_id for m in comp.matches] == want_ids.tolist()
        assert [m.score for m in comp.matches] == want_scores.tolist()  # bit-identical float64
        assert [m.mask_iou for m in comp.matches] == want_m.tolist()
        assert [m.context_iou for m in comp.matches] == want_c.tolist()
        checked += 1
    return checked


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), k=st.integers(1, 6), exclude=st.booleans())
def test_exact_equals_brute_force_on_random_banks(compiled: bool, seed: int, k: int, exclude: bool) -> None:
    arrays, layouts = random_bank(seed, images=12)
    engine = engine_for(arrays)
    engine.compiled = compiled  # False: the torch path CUDA runs, here on CPU
    query = blocky_layout(np.random.default_rng(seed + 1))
    opts = {"exclude_images": [0, 3]} if exclude else {}
    assert_equals_brute_force(engine, arrays, query, k, **opts)
    # A bank image's own layout, too (many exact 2.0 ties are possible across images).
    assert_equals_brute_force(engine, arrays, layouts[5], k, **opts)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), k=st.integers(1, 6), mode=st.sampled_from(["fast", "exact"]))
def test_classes_ranked_on_threads_answer_as_on_one(seed: int, k: int, mode: str) -> None:
    arrays, _ = random_bank(seed, images=12)
    index = SegmentIndex.from_arrays(**arrays, config=CFG, resolution=FRAME, num_classes=NUM_CLASSES)
    one, three = RetrievalEngine(index, class_threads=1), RetrievalEngine(index, class_threads=3)
    assert (one.class_threads, three.class_threads) == (1, 3)
    options = RetrievalOptions(k=k, mode=mode, candidates=4, seed=seed)
    layouts = [blocky_layout(np.random.default_rng(seed + i)) for i in range(4)]
    want = [one.retrieve(layout, options) for layout in layouts]
    # Concurrent requests share the process's pool of ranking threads.
    with ThreadPoolExecutor(4) as clients:
        got = list(clients.map(lambda layout: three.retrieve(layout, options), layouts * 2))
    for w, g in zip(want * 2, got, strict=True):
        assert g.components == w.components and g.scored == w.scored


def real_arrays(bank: Bank) -> dict:
    return {
        "class_id": bank.column("class_id"),
        "image_id": bank.column("image_id"),
        "mask": np.asarray(bank.codes["mask"][:]),
        "context": bank.context_rows(),
        "coarse": np.asarray(bank.codes["coarse"][:]),
    }


@pytest.fixture(scope="module")
def real_engine(val_bank: Bank) -> RetrievalEngine:
    return RetrievalEngine.from_bank(val_bank)


def test_exact_equals_brute_force_on_real_bank(val_bank: Bank, real_engine: RetrievalEngine) -> None:
    arrays = real_arrays(val_bank)
    rng = np.random.default_rng(0)
    checked = 0
    for image_id in range(val_bank.num_images):
        label = np.asarray(val_bank.labels[image_id])
        # Shift the layout so it is not the bank's own image.
        label = np.roll(label, (int(rng.integers(-20, 20)), int(rng.integers(-30, 30))), axis=(0, 1))
        checked += assert_equals_brute_force(real_engine, arrays, label, k=3, exclude_images=[image_id])
    assert checked > 100


def test_own_layout_returns_its_own_segments(val_bank: Bank, real_engine: RetrievalEngine) -> None:
    for image_id in (0, 5):
        label = np.asarray(val_bank.labels[image_id])
        own = val_bank.segment_ids()[val_bank.column("image_id") == image_id]
        for mode in ("exact", "fast"):
            result = real_engine.retrieve(label, RetrievalOptions(k=1, mode=mode))
            kept = [c for c in result.components if c.status is Status.OK]
            assert len(kept) == own.size
            for comp, sid in zip(kept, own, strict=True):
                assert comp.matches[0].segment_id == sid
                assert comp.matches[0].score == 2.0
                assert comp.matches[0].image_id == image_id


def test_exclusion_min_area_and_diversity(val_bank: Bank, real_engine: RetrievalEngine) -> None:
    label = np.asarray(val_bank.labels[2])
    excluded = real_engine.retrieve(label, RetrievalOptions(k=5, mode="exact", exclude_images=[2, 3]))
    assert all(m.image_id not in (2, 3) for c in excluded.components for m in c.matches)
    fast = real_engine.retrieve(label, RetrievalOptions(k=5, mode="fast", exclude_images=[2]))
    assert all(m.image_id != 2 for c in fast.components for m in c.matches)
    big = real_engine.retrieve(label, RetrievalOptions(k=5, min_area=2000))
    for c in big.components:
        assert (c.status is Status.BELOW_MIN_AREA) == (c.area < 2000)
    a = real_engine.retrieve(label, RetrievalOptions(k=5, seed=7))
    b = real_engine.retrieve(label, RetrievalOptions(k=5, seed=7))
    c = real_engine.retrieve(label, RetrievalOptions(k=5, seed=8))
    picks = [x.choice for x in a.components if x.matches]
    assert picks == [x.choice for x in b.components if x.matches]
    assert picks != [x.choice for x in c.components if x.matches]
    assert all(0 <= p < 5 for p in picks) and len(set(picks)) > 1
    unseeded = real_engine.retrieve(label, RetrievalOptions(k=5))
    assert all(x.choice == 0 for x in unseeded.components if x.matches)


def test_degenerate_layouts(val_bank: Bank, real_engine: RetrievalEngine) -> None:
    h, w = val_bank.resolution
    road = real_engine.retrieve(np.full((h, w), 3, np.uint8), RetrievalOptions(k=2, mode="exact"))
    assert len(road.components) == 1 and road.components[0].status is Status.OK
    assert road.components[0].bbox == (0, 0, h, w) and road.components[0].area == h * w
    empty = real_engine.retrieve(np.full((h, w), IGNORE, np.uint8))
    assert empty.components == ()
    tiny = np.full((h, w), IGNORE, np.uint8)
    tiny[10:13, 10:13] = 8  # 9 px car, below the bank's 64 px minimum
    tiny[100:200, 100:300] = 3
    result = real_engine.retrieve(tiny)
    assert [c.status for c in result.components] == [Status.OK, Status.BELOW_MIN_AREA]
    with pytest.raises(LayoutError, match=r"class ids \[11\]"):
        real_engine.retrieve(np.full((h, w), 11, np.uint8))
    with pytest.raises(LayoutError, match="working resolution"):
        real_engine.retrieve(np.zeros((h // 2, w), np.uint8))


def test_class_missing_from_bank() -> None:
    arrays, _ = random_bank(3, images=6)
    keep = arrays["class_id"] != 2
    engine = engine_for({k: v[keep] for k, v in arrays.items()})
    label = np.full(FRAME, 1, np.uint8)
    label[:, :20] = 2
    result = engine.retrieve(label, RetrievalOptions(k=3, mode="exact"))
    status = {c.class_id: c.status for c in result.components}
    assert status == {1: Status.OK, 2: Status.CLASS_NOT_IN_BANK}
    assert result.components[0].matches == () or result.components[1].matches == ()


def test_excluding_every_image_gives_no_candidates() -> None:
    arrays, layouts = random_bank(4, images=3)
    engine = engine_for(arrays)
    result = engine.retrieve(layouts[0], RetrievalOptions(k=3, mode="fast", exclude_images=[0, 1, 2]))
    assert {c.status for c in result.components} <= {Status.NO_CANDIDATES, Status.BELOW_MIN_AREA}
    assert any(c.status is Status.NO_CANDIDATES for c in result.components)
