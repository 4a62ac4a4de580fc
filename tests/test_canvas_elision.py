"""Boundary elision and compositing on constructed canvases: exact bands, fractions, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthesis.canvas.compose import NO_SEGMENT, composite, mask_box
from synthesis.canvas.elision import BLACK, KEPT, WHITE, ElisionConfig, elide, inside_band, outside_band, seams

H, W = 100, 120


def two_pieces() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left half piece 0 (red), right half piece 1 (green), a missing strip at the bottom."""
    pieces = np.full((H, W), NO_SEGMENT, np.int32)
    pieces[:80, :60] = 0
    pieces[:80, 60:] = 1
    canvas = np.zeros((H, W, 3), np.uint8)
    canvas[pieces == 0] = (200, 0, 0)
    canvas[pieces == 1] = (0, 200, 0)
    layout = np.full((H, W), 3, np.uint8)
    return canvas, pieces == NO_SEGMENT, pieces, layout


def test_seams_and_inside_band_exact() -> None:
    _, _, pieces, _ = two_pieces()
    edge = seams(pieces)
    # The vertical seam (columns 59, 60) and the row above and below y=80 (rows 79, 80).
    assert edge[10, 59] and edge[10, 60] and not edge[10, 58]
    assert edge[79, 10] and edge[80, 10] and not edge[78, 10]
    # The frame border is not a boundary.
    assert not edge[0, 10] and not edge[10, 0]
    band = inside_band(pieces, 5.0)
    assert band[10, 55] and not band[10, 54]  # distance 4 from column 59 is in, 5 is out
    assert band[75, 10] and not band[74, 10]
    assert not band[90].any()  # missing pixels are never in a piece's band


def test_elide_white_fraction_exact_and_seeded() -> None:
    canvas, missing, pieces, layout = two_pieces()
    cfg = ElisionConfig(band=0.05)  # 5 px at H = 100
    out = elide(canvas, missing, pieces, layout, [], np.random.default_rng(0), cfg)
    band = inside_band(pieces, cfg.radius(H))
    white = out.code == WHITE
    assert white.sum() == round(0.8 * band.sum())
    assert not (white & ~band).any()
    assert (out.canvas[white] == 255).all()
    assert (out.canvas[out.code == KEPT] == canvas[out.code == KEPT]).all()
    assert (out.missing == missing).all()  # no object classes: no black band
    assert canvas[0, 0, 0] == 200  # inputs untouched
    again = elide(canvas, missing, pieces, layout, [], np.random.default_rng(0), cfg)
    assert (again.canvas == out.canvas).all()
    other = elide(canvas, missing, pieces, layout, [], np.random.default_rng(1), cfg)
    assert (other.code != out.code).any()


def test_elide_black_outside_objects() -> None:
    canvas, missing, pieces, layout = two_pieces()
    layout[30:50, 20:40] = 8  # an object
    out = elide(canvas, missing, pieces, layout, [8], np.random.default_rng(0), ElisionConfig(band=0.05))
    black = out.code == BLACK
    assert black[30, 15] and black[30, 19] and not black[30, 14]  # 1..5 px left of the object
    assert black[54, 30] and not black[55, 30]
    assert not black[30:50, 20:40].any()  # never the object itself
    assert (out.canvas[black] == 0).all() and out.missing[black].all()
    assert (black == outside_band(layout == 8, 5.0)).all()
    # Switched off: no black at all.
    off = elide(
        canvas, missing, pieces, layout, [8], np.random.default_rng(0), ElisionConfig(black_outside_objects=False)
    )
    assert not (off.code == BLACK).any()


def test_elide_validates_and_handles_empty() -> None:
    canvas, missing, pieces, layout = two_pieces()
    with pytest.raises(ValueError, match="frame"):
        elide(canvas[:10], missing, pieces, layout, [], np.random.default_rng(0))
    with pytest.raises(ValueError, match="white_fraction"):
        ElisionConfig(white_fraction=1.5)
    empty = np.full((H, W), NO_SEGMENT, np.int32)
    out = elide(np.zeros((H, W, 3), np.uint8), np.ones((H, W), bool), empty, layout, [8], np.random.default_rng(0))
    assert out.missing.all() and not out.canvas.any()


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_white_fraction_property(fraction: float, seed: int) -> None:
    canvas, missing, pieces, layout = two_pieces()
    cfg = ElisionConfig(band=0.08, white_fraction=fraction)
    out = elide(canvas, missing, pieces, layout, [], np.random.default_rng(seed), cfg)
    n = inside_band(pieces, cfg.radius(H)).sum()
    assert (out.code == WHITE).sum() == round(fraction * n)


def test_composite_back_to_front_and_provenance() -> None:
    frame = (H, W)
    a = np.zeros(frame, bool)
    a[10:60, 10:60] = True
    b = np.zeros(frame, bool)
    b[40:90, 40:100] = True
    pa = np.full((H, W, 3), 10, np.uint8)
    pb = np.full((H, W, 3), 20, np.uint8)
    out = composite(frame, [pa, pb], [a, b], [7, 9], [0, 1])
    assert out.canvas.dtype == np.uint8 and out.provenance.dtype == np.int64 and out.missing.dtype == bool
    assert (out.canvas[50, 50] == 20).all() and out.provenance[50, 50] == 9  # b on top
    assert out.provenance[20, 20] == 7 and out.provenance[0, 0] == NO_SEGMENT and out.missing[0, 0]
    assert (out.missing == ~(a | b)).all()
    flipped = composite(frame, [pa, pb], [a, b], [7, 9], [1, 0])
    assert flipped.provenance[50, 50] == 7
    # Provenance agrees with the pixels everywhere.
    for sid, px in ((7, pa), (9, pb)):
        sel = out.provenance == sid
        assert (out.canvas[sel] == px[sel]).all()
    assert not out.canvas[out.missing].any()
    with pytest.raises(ValueError, match="distinct"):
        composite(frame, [pa], [a], [7], [0, 0])
    assert mask_box(np.zeros(frame, bool)) is None and mask_box(a) == (10, 10, 60, 60)


def test_composite_rejects_wrong_dtypes() -> None:
    frame = (H, W)
    mask = np.ones(frame, bool)
    with pytest.raises(ValueError, match="uint8"):
        composite(frame, [np.zeros((H, W, 3), np.float32)], [mask], [1], [0])
    with pytest.raises(ValueError, match="frame"):
        composite(frame, [np.zeros((H, W + 1, 3), np.uint8)], [mask], [1], [0])
