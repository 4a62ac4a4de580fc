"""The layout-derived depth rule: tiers, containment, lower-is-nearer, and the paint order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthesis.canvas.order_rule import DepthTiers, LayoutOrderer, Tier, paint_order, pair_order

FRAME = (40, 60)
NAMES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
TIERS = DepthTiers.from_class_names(NAMES)


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros(FRAME, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_tiers_from_names() -> None:
    assert TIERS.far == {0}
    assert TIERS.background == {1, 3, 4, 5, 7}
    assert TIERS.tier(0) == Tier.FAR and TIERS.tier(3) == Tier.BACKGROUND and TIERS.tier(8) == Tier.OBJECT
    with pytest.raises(ValueError, match="both far and background"):
        DepthTiers(far=frozenset({1}), background=frozenset({1}))


def test_tier_beats_geometry() -> None:
    sky = box(20, 0, 40, 60)  # lower than the car, still behind it
    car = box(0, 10, 10, 20)
    assert pair_order(car, sky, 8, 0, TIERS) == 1
    assert pair_order(sky, car, 0, 8, TIERS) == -1
    building = box(0, 0, 40, 60)
    assert pair_order(building, sky, 1, 0, TIERS) == 1


def test_containment_beats_bottom_edge() -> None:
    # A ring-like big segment whose bottom is lower, enclosing a small one in its hull.
    big = box(0, 0, 40, 60)
    big[5:30, 10:50] = False
    small = box(10, 20, 20, 30)
    assert pair_order(small, big, 8, 9) == 1
    assert pair_order(big, small, 9, 8) == -1


def test_lower_bottom_is_nearer_and_ties() -> None:
    far = box(5, 0, 20, 30)
    near = box(10, 20, 30, 50)
    assert pair_order(near, far, 8, 8) == 1
    assert pair_order(far, near, 8, 8) == -1
    # Same bottom row: the smaller one is in front; identical masks are undetermined.
    wide, narrow = box(10, 0, 30, 40), box(15, 30, 30, 45)
    assert pair_order(narrow, wide, 8, 8) == 1
    assert pair_order(wide, wide.copy(), 8, 8) == 0
    empty = np.zeros(FRAME, bool)
    assert pair_order(empty, wide, 8, 8) == -1 and pair_order(empty, empty, 8, 8) == 0


def test_paint_order_constructed_scene() -> None:
    layout = np.zeros(FRAME, np.uint8)
    masks = [box(0, 0, 40, 60), box(0, 0, 15, 60), box(10, 5, 30, 25), box(20, 20, 38, 40), box(5, 40, 12, 50)]
    classes = [3, 0, 8, 9, 6]  # road, sky, car, pedestrian, sign
    order = paint_order(masks, classes, layout, TIERS)
    assert order[0] == 1  # sky first
    assert order[1] == 0  # then road (background)
    # Among the objects, the pedestrian's bottom is lowest and it overlaps the car: it goes after it.
    assert order.index(3) > order.index(2)
    assert sorted(order) == list(range(5))
    assert LayoutOrderer(TIERS)(layout, masks, classes) == order


def test_paint_order_validates() -> None:
    with pytest.raises(ValueError, match="class ids"):
        paint_order([box(0, 0, 2, 2)], [1, 2])
    with pytest.raises(ValueError, match="layout"):
        paint_order([box(0, 0, 2, 2)], [1], np.zeros((3, 3), np.uint8))
    assert paint_order([], []) == []


@st.composite
def scenes(draw: st.DrawFn) -> tuple[list[np.ndarray], list[int]]:
    n = draw(st.integers(1, 7))
    masks, classes = [], []
    for _ in range(n):
        y0 = draw(st.integers(0, FRAME[0] - 1))
        x0 = draw(st.integers(0, FRAME[1] - 1))
        y1 = draw(st.integers(y0, FRAME[0]))
        x1 = draw(st.integers(x0, FRAME[1]))
        masks.append(box(y0, x0, y1, x1))
        classes.append(draw(st.integers(0, 10)))
    return masks, classes


@settings(max_examples=40, deadline=None)
@given(scenes())
def test_paint_order_properties(scene: tuple[list[np.ndarray], list[int]]) -> None:
    masks, classes = scene
    order = paint_order(masks, classes, None, TIERS)
    assert sorted(order) == list(range(len(masks)))
    pos = {j: p for p, j in enumerate(order)}
    nonempty = [i for i in range(len(masks)) if masks[i].any()]
    for a in nonempty:
        for b in nonempty:
            d = pair_order(masks[a], masks[b], classes[a], classes[b], TIERS)
            assert d == -pair_order(masks[b], masks[a], classes[b], classes[a], TIERS)
            ta, tb = TIERS.tier(classes[a]), TIERS.tier(classes[b])
            if ta != tb:  # tiers are never violated, overlap or not
                assert (pos[a] > pos[b]) == (ta > tb)
    # Deterministic.
    assert paint_order(masks, classes, None, TIERS) == order
