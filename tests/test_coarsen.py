"""Coarsening of fine label maps: determinism, what labels may change into, and each step on its own."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from memory_bank.classes import IGNORE
from memory_bank.errors import LayoutError
from synthesis.coarsen import CoarsenConfig, coarsen_batch, coarsen_layout

#: Every step switched off: coarsening must then be the identity.
NOTHING = CoarsenConfig(erosion=(0, 0), min_area=0, drop_area=0, drop_prob=0, simplify=0, gaps=0)
#: Strong settings, so that each step has visible effects on small maps.
STRONG = CoarsenConfig(
    erosion=(0.02, 0.08), min_area=0.002, drop_area=0.02, drop_prob=0.5, simplify=0.04, gaps=4, gap_radius=(0.03, 0.1)
)


@pytest.fixture(scope="module")
def sample_labels(sample_root: Path) -> list[np.ndarray]:
    """Three CamVid val label maps of the bundled sample, unlabelled (11) mapped to 255."""
    paths = sorted((sample_root / "valannot").glob("*.png"))[:3]
    out = []
    for p in paths:
        label = np.asarray(Image.open(p)).astype(np.uint8)
        out.append(np.where(label >= 11, IGNORE, label).astype(np.uint8))
    return out


@st.composite
def label_maps(draw: st.DrawFn) -> np.ndarray:
    """Blocky label maps (a random grid upscaled) with some unlabelled pixels and single-pixel noise."""
    gh, gw = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    scale = draw(st.integers(4, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    grid = rng.choice(np.array([0, 1, 2, 3, IGNORE], np.uint8), size=(gh, gw), p=[0.3, 0.25, 0.2, 0.15, 0.1])
    label = np.kron(grid, np.ones((scale, scale), np.uint8))
    noise = rng.random(label.shape) < 0.02
    label[noise] = rng.integers(0, 4, int(noise.sum()))
    return label


def near(fine: np.ndarray, class_id: int, distance: int) -> np.ndarray:
    """Pixels within ``distance`` (Chebyshev) of a pixel of ``class_id`` in ``fine``."""
    kernel = np.ones((2 * distance + 1, 2 * distance + 1), np.uint8)
    return cv2.dilate((fine == class_id).astype(np.uint8), kernel).astype(bool)


def check_changes(fine: np.ndarray, coarse: np.ndarray, config: CoarsenConfig) -> None:
    """Changed pixels become 255, or a class that the fine map has within ``max_shift``."""
    changed = coarse != fine
    reach = config.max_shift(fine.shape[0])
    for c in np.unique(coarse[changed]):
        if c == IGNORE:
            continue
        where = changed & (coarse == c)
        assert near(fine, int(c), reach)[where].all(), f"class {c} painted beyond {reach} px of its region"


@settings(max_examples=40, deadline=None)
@given(label_maps(), st.integers(0, 1000))
def test_changes_are_unlabelled_or_a_nearby_label(fine: np.ndarray, seed: int) -> None:
    coarse = coarsen_layout(fine, STRONG, seed)
    assert coarse.shape == fine.shape and coarse.dtype == np.uint8
    assert set(np.unique(coarse).tolist()) <= set(np.unique(fine).tolist()) | {IGNORE}
    check_changes(fine, coarse, STRONG)


@settings(max_examples=25, deadline=None)
@given(label_maps(), st.integers(0, 1000))
def test_nothing_switched_on_is_the_identity(fine: np.ndarray, seed: int) -> None:
    np.testing.assert_array_equal(coarsen_layout(fine, NOTHING, seed), fine)


@settings(max_examples=25, deadline=None)
@given(label_maps(), st.integers(0, 1000))
def test_without_simplification_labels_never_change_class(fine: np.ndarray, seed: int) -> None:
    # Erosion, drops and gaps only remove labels; only polygon outlines can move one.
    config = CoarsenConfig(erosion=(0.02, 0.08), min_area=0.002, drop_area=0.02, simplify=0, gaps=3)
    coarse = coarsen_layout(fine, config, seed)
    labelled = coarse != IGNORE
    np.testing.assert_array_equal(coarse[labelled], fine[labelled])


def test_real_layouts(sample_labels: list[np.ndarray]) -> None:
    config = CoarsenConfig()
    for i, fine in enumerate(sample_labels):
        coarse = coarsen_layout(fine, config, seed=i)
        check_changes(fine, coarse, config)
        labelled = fine != IGNORE
        coverage = (coarse[labelled] != IGNORE).mean()
        # Coarse, but still mostly there, and its labels mostly right.
        assert 0.5 < coverage < 0.97
        assert (coarse[labelled & (coarse != IGNORE)] == fine[labelled & (coarse != IGNORE)]).mean() > 0.97


def test_deterministic_for_a_seed(sample_labels: list[np.ndarray]) -> None:
    fine = sample_labels[0]
    a, b = coarsen_layout(fine, seed=7), coarsen_layout(fine, seed=7)
    np.testing.assert_array_equal(a, b)
    others = [coarsen_layout(fine, seed=s) for s in (8, 9, 10)]
    assert any(not np.array_equal(a, o) for o in others)
    batch = coarsen_batch(np.stack([fine, fine]), CoarsenConfig(), np.array([7, 8]))
    np.testing.assert_array_equal(batch[0], a)
    np.testing.assert_array_equal(batch[1], others[0])


def test_small_regions_are_dropped_and_large_ones_kept() -> None:
    fine = np.zeros((100, 100), np.uint8)
    fine[10:14, 10:14] = 1  # 16 px < min_area
    fine[50:90, 40:90] = 2  # 2000 px > drop_area
    config = CoarsenConfig(erosion=(0, 0), min_area=0.002, drop_area=0.01, drop_prob=1.0, simplify=0, gaps=0)
    coarse = coarsen_layout(fine, config, seed=0)
    assert not (coarse == 1).any()
    assert (coarse[10:14, 10:14] == IGNORE).all()  # dropped to unlabelled, not to the background's label
    np.testing.assert_array_equal(coarse[50:90, 40:90], 2)


def test_erosion_removes_a_band_inside_boundaries_but_not_at_the_frame() -> None:
    fine = np.zeros((100, 100), np.uint8)
    fine[:, 50:] = 1
    r = 5
    config = CoarsenConfig(erosion=(r / 100, r / 100), min_area=0, drop_prob=0, simplify=0, gaps=0)
    coarse = coarsen_layout(fine, config, seed=0)
    # A band of 2r unlabelled pixels along the class boundary...
    assert (coarse[:, 50 - r : 50 + r] == IGNORE).all()
    assert (coarse[:, : 50 - r] == 0).all() and (coarse[:, 50 + r :] == 1).all()


def test_gaps_only_unlabel_pixels_near_boundaries() -> None:
    fine = np.zeros((120, 160), np.uint8)
    fine[60:, :] = 3
    config = CoarsenConfig(erosion=(0, 0), min_area=0, drop_prob=0, simplify=0, gaps=5, gap_radius=(0.05, 0.05))
    coarse = coarsen_layout(fine, config, seed=3)
    changed = coarse != fine
    assert changed.any()
    assert (coarse[changed] == IGNORE).all()
    rows = np.nonzero(changed)[0]
    assert rows.min() >= 60 - 7 and rows.max() <= 60 + 6  # radius 6 around the boundary rows 59/60


def test_bad_inputs() -> None:
    with pytest.raises(LayoutError):
        coarsen_layout(np.zeros((4, 4), np.int32))
    with pytest.raises(LayoutError):
        coarsen_layout(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        CoarsenConfig(erosion=(0.1, 0.05))
    with pytest.raises(ValueError):
        CoarsenConfig.from_dict({"erode": 1})
    assert CoarsenConfig.from_dict(CoarsenConfig().to_dict()) == CoarsenConfig()
