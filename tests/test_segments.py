"""Segment extraction and codes: against scipy, the context-box rule, code invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from memory_bank import IGNORE, LayoutError, SegmentConfig, encode_segments, extract_segments
from memory_bank.codes import box_cells, label_grid, mask_cells, pack_bits, popcount, unpack_bits
from memory_bank.grid import cell_index
from memory_bank.segments import context_box

NUM_CLASSES = 4


def label_maps(max_side: int = 40) -> st.SearchStrategy[np.ndarray]:
    """Random label maps with blobs: values 0..3 and IGNORE, sizes up to max_side."""
    shapes = st.tuples(st.integers(2, max_side), st.integers(2, max_side))
    values = st.sampled_from([0, 1, 2, 3, IGNORE])
    return shapes.flatmap(lambda s: arrays(np.uint8, s, elements=values))


def scipy_components(label: np.ndarray, connectivity: int, min_area: int) -> list[tuple[int, frozenset[int]]]:
    """Reference: (class, pixel set) of every component, class-major, scipy's numbering."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    out = []
    for c in range(NUM_CLASSES):
        cc, n = ndimage.label(label == c, structure=structure)
        for k in range(1, n + 1):
            pixels = np.flatnonzero(cc.ravel() == k)
            if pixels.size >= min_area:
                out.append((c, frozenset(pixels.tolist())))
    return out


@settings(max_examples=150, deadline=None)
@given(label=label_maps(), connectivity=st.sampled_from([4, 8]), min_area=st.integers(1, 6))
def test_components_match_scipy_label(label: np.ndarray, connectivity: int, min_area: int) -> None:
    cfg = SegmentConfig(connectivity=connectivity, min_area=min_area, fine_grid=(2, 2), coarse_grids=((1, 1),))
    seg = extract_segments(label, NUM_CLASSES, cfg)
    got = [(int(seg.class_id[i]), frozenset(np.flatnonzero(seg.mask(i).ravel()).tolist())) for i in range(len(seg))]
    assert got == scipy_components(label, connectivity, min_area)
    # Areas, boxes, centroids and the drop count agree with the masks.
    total = sum(len(scipy_components(label, connectivity, 1)) for _ in [0])
    assert seg.dropped == total - len(seg)
    for i in range(len(seg)):
        ys, xs = np.nonzero(seg.mask(i))
        assert seg.area[i] == ys.size
        assert tuple(seg.bbox[i]) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        np.testing.assert_allclose(seg.centroid[i], (ys.mean() + 0.5, xs.mean() + 0.5), rtol=1e-5)


@given(
    box=st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(1, 100), st.integers(1, 100)),
    frame=st.tuples(st.integers(100, 400), st.integers(100, 400)),
)
def test_context_box_rule(box: tuple[int, int, int, int], frame: tuple[int, int]) -> None:
    y0, x0 = box[0], box[1]
    y1, x1 = min(y0 + box[2], frame[0]), min(x0 + box[3], frame[1])
    cy0, cx0, cy1, cx1 = context_box(np.array([y0, x0, y1, x1]), frame, 1.25)[0]
    h, w = y1 - y0, x1 - x0
    # Contains the bbox, stays in the frame, and is the 25%-larger box rounded outwards.
    assert 0 <= cy0 <= y0 and y1 <= cy1 <= frame[0]
    assert 0 <= cx0 <= x0 and x1 <= cx1 <= frame[1]
    assert cy0 == max(0, int(np.floor((y0 + y1) / 2 - 0.625 * h)))
    assert cy1 == min(frame[0], int(np.ceil((y0 + y1) / 2 + 0.625 * h)))
    assert cx0 == max(0, int(np.floor((x0 + x1) / 2 - 0.625 * w)))
    assert cx1 == min(frame[1], int(np.ceil((x0 + x1) / 2 + 0.625 * w)))
    unclipped = (cy0 > 0 and cy1 < frame[0]) and (cx0 > 0 and cx1 < frame[1])
    if unclipped:
        assert 1.25 * h <= cy1 - cy0 <= 1.25 * h + 2
        assert 1.25 * w <= cx1 - cx0 <= 1.25 * w + 2


def test_context_box_example() -> None:
    # A 40x80 box centred at (60, 100) grows to 50x100, and is clipped at the frame's edge.
    np.testing.assert_array_equal(context_box(np.array([40, 60, 80, 140]), (360, 480), 1.25), [[35, 50, 85, 150]])
    np.testing.assert_array_equal(context_box(np.array([0, 0, 40, 80]), (360, 480), 1.25), [[0, 0, 45, 90]])


def test_min_area_drops_and_counts() -> None:
    label = np.full((20, 20), IGNORE, np.uint8)
    label[0:10, 0:10] = 1  # 100 px
    label[15, 15] = 2  # 1 px
    label[18:20, 0:3] = 2  # 6 px
    seg = extract_segments(label, 3, SegmentConfig(min_area=6, fine_grid=(4, 4), coarse_grids=((2, 2),)))
    assert seg.class_id.tolist() == [1, 2]
    assert seg.area.tolist() == [100, 6]
    assert (seg.dropped, seg.dropped_area) == (1, 1)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.uint8), "2-D"),
        (np.full((4, 4), 7, np.uint8), r"class ids \[7\]"),
        (np.full((4, 4), 0.5), "integer"),
        (np.full((4, 4), 300, np.int32), "0..255"),
    ],
)
def test_bad_label_maps_are_refused(label: np.ndarray, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        extract_segments(label, 4, SegmentConfig())


def test_all_ignore_label_map_has_no_segments() -> None:
    cfg = SegmentConfig(fine_grid=(3, 4), coarse_grids=((2, 2),))
    seg = extract_segments(np.full((30, 40), IGNORE, np.uint8), 4, cfg)
    assert len(seg) == 0
    codes = encode_segments(np.full((30, 40), IGNORE, np.uint8), seg, 4, cfg)
    assert codes.mask.shape == (0, 8) and codes.context.shape == (0, 12)


@settings(max_examples=60, deadline=None)
@given(label=label_maps(48), grid=st.tuples(st.integers(1, 8), st.integers(1, 8)))
def test_codes_are_consistent(label: np.ndarray, grid: tuple[int, int]) -> None:
    grid = (min(grid[0], label.shape[0]), min(grid[1], label.shape[1]))
    coarse = ((max(1, grid[0] // 2), max(1, grid[1] // 3)), (1, 1))
    cfg = SegmentConfig(min_area=1, fine_grid=grid, coarse_grids=coarse)
    seg = extract_segments(label, NUM_CLASSES, cfg)
    codes = encode_segments(label, seg, NUM_CLASSES, cfg)
    cells = grid[0] * grid[1]
    bits = unpack_bits(codes.mask, cells)
    idx = cell_index(label.shape, grid).ravel()
    for i in range(len(seg)):
        cover = np.bincount(idx, weights=seg.mask(i).ravel(), minlength=cells) / np.bincount(idx, minlength=cells)
        # At least half covered, or the single best covered cell; never empty.
        expected = cover >= 0.5
        expected[cover.argmax()] = True
        np.testing.assert_array_equal(bits[i], expected)
        # Context: its own class on its mask cells, majority labels in the box, IGNORE elsewhere.
        in_box = box_cells(seg.context_box[i : i + 1], label.shape, grid)[0] | expected
        want = np.where(in_box, label_grid(label, NUM_CLASSES, grid), IGNORE)
        np.testing.assert_array_equal(codes.context[i], np.where(expected, seg.class_id[i], want))
    np.testing.assert_array_equal(codes.mask_popcount, bits.sum(axis=1))
    # Coarse code: the fine mask OR-pooled to each coarse grid, levels concatenated.
    coarse = unpack_bits(codes.coarse, sum(g[0] * g[1] for g in cfg.coarse_grids))
    start = 0
    for ch, cw in cfg.coarse_grids:
        want = np.zeros((len(seg), ch, cw), bool)
        for r in range(grid[0]):
            for c in range(grid[1]):
                want[:, r * ch // grid[0], c * cw // grid[1]] |= bits[:, r * grid[1] + c]
        np.testing.assert_array_equal(coarse[:, start : start + ch * cw], want.reshape(len(seg), ch * cw))
        start += ch * cw
    np.testing.assert_array_equal(codes.context_popcount, (codes.context != IGNORE).sum(axis=1))


def test_label_grid_majority_and_ties() -> None:
    label = np.array([[0, 0, 1, 1], [0, 1, IGNORE, IGNORE]], np.uint8)
    # Cells of 2x2: left has three 0s; right ties 1 vs IGNORE: the class wins ties.
    assert label_grid(label, 2, (1, 2)).tolist() == [0, 1]
    label[1, 3] = IGNORE
    label[0, 3] = IGNORE
    assert label_grid(label, 2, (1, 2)).tolist() == [0, IGNORE]


def test_bit_packing_round_trip_and_popcount() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random((5, 77)) < 0.3
    packed = pack_bits(bits)
    assert packed.shape == (5, 16)  # 77 bits -> 10 bytes -> padded to 16
    np.testing.assert_array_equal(unpack_bits(packed, 77), bits)
    np.testing.assert_array_equal(popcount(packed), bits.sum(axis=1))


def test_mask_cells_on_uneven_grid() -> None:
    # 10 rows on a 3-row grid: rows 0-3, 4-6, 7-9 (cell of row r is r * 3 // 10).
    label = np.zeros((10, 4), np.uint8)
    label[4:7] = 1
    seg = extract_segments(label, 2, SegmentConfig(min_area=1, fine_grid=(3, 1), coarse_grids=((1, 1),)))
    assert seg.class_id.tolist() == [0, 0, 1]
    assert mask_cells(seg, (3, 1)).tolist() == [[True, False, False], [False, False, True], [False, True, False]]
