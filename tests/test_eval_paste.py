"""The paste reference row: a canvas's kept pixels over another set's output, nothing learnt."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import DatasetError
from synthesis.canvas.builder import Canvas, PlacedSegment
from synthesis.evaluation.image_sets import (
    EvalItem,
    PastedImages,
    SetOutput,
    SynthesizedImages,
    output_for,
    paste_canvas,
    paste_name,
)


def make_canvas(rng: np.random.Generator, rows: int, cols: int) -> Canvas:
    """A canvas with random pixels, some pixels missing, some elided (white or black), the rest kept."""
    pixels = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    code = rng.choice(np.array([0, 0, 1, 2], np.uint8), (rows, cols))
    missing = (rng.random((rows, cols)) < 0.2) | (code == 2)
    provenance = np.where(missing | (code != 0), -1, rng.integers(0, 5, (rows, cols))).astype(np.int64)
    pixels[code == 1] = 255
    pixels[missing] = 0
    segments = tuple(PlacedSegment(i, i % 3, i, 10 + i, 0.5, i) for i in range(5))
    return Canvas(pixels, missing, provenance, code, segments)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 24), cols=st.integers(1, 24))
def test_paste_takes_kept_pixels_from_the_canvas_and_the_rest_from_the_base(seed: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(seed)
    canvas = make_canvas(rng, rows, cols)
    base = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    got = paste_canvas(canvas.canvas, canvas.provenance, base)
    kept = canvas.provenance >= 0
    assert got.dtype == np.uint8 and got.shape == base.shape
    np.testing.assert_array_equal(got[kept], canvas.canvas[kept])
    np.testing.assert_array_equal(got[~kept], base[~kept])
    # Elided (white) and missing (black) canvas pixels never leak into the paste.
    np.testing.assert_array_equal(got[canvas.elision != 0], base[canvas.elision != 0])


def test_a_smaller_base_is_resized_to_the_canvas() -> None:
    canvas = make_canvas(np.random.default_rng(0), 24, 32)
    base = np.full((12, 16, 3), 77, np.uint8)
    got = paste_canvas(canvas.canvas, canvas.provenance, base)
    assert got.shape == (24, 32, 3)
    np.testing.assert_array_equal(got[canvas.provenance < 0], 77)
    with pytest.raises(ValueError, match="differ"):
        paste_canvas(canvas.canvas[:10], canvas.provenance, base)


@dataclass
class _CanvasSet:
    """A stand-in for the SIMS checkpoint set: a fixed canvas, counting its calls."""

    name: str
    canvas: Canvas
    calls: int = 0

    def output_for(self, item: EvalItem) -> SetOutput:
        self.calls += 1
        return SetOutput(np.zeros_like(self.canvas.canvas), self.canvas)

    def image_for(self, item: EvalItem) -> np.ndarray:
        return self.output_for(item).image


def test_pasted_images_compose_two_sets() -> None:
    canvas = make_canvas(np.random.default_rng(1), 8, 12)
    item = EvalItem(0, "x", np.zeros((8, 12, 3), np.uint8), np.zeros((8, 12), np.uint8))
    sims = _CanvasSet("SIMS", canvas)
    base = SynthesizedImages("flat", lambda layout: np.full((*layout.shape, 3), 9, np.uint8))
    pasted = PastedImages(paste_name("flat"), sims, base)
    assert pasted.name == "paste (canvas over flat)"
    got = output_for(pasted, item)
    kept = canvas.provenance >= 0
    np.testing.assert_array_equal(got.image[kept], canvas.canvas[kept])
    assert (got.image[~kept] == 9).all()
    assert got.canvas is None and got.segments == () and got.provenance is None
    # A folder-like set (image only) gives no canvas: a clear error, not a silent base image.
    with pytest.raises(DatasetError, match="no canvas"):
        PastedImages("p", base, base).image_for(item)
