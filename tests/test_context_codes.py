"""Boxed context codes (memory_bank/context_codes.py): exact round trips of the dense rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import Bank
from memory_bank.classes import IGNORE
from memory_bank.context_codes import BoxedContexts, grid_boxes

GRID = (6, 9)


@st.composite
def context_rows(draw: st.DrawFn) -> np.ndarray:
    """Dense rows: IGNORE with a few labelled rectangles (and stray cells), at least one cell each."""
    n = draw(st.integers(0, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = np.full((n, GRID[0] * GRID[1]), IGNORE, np.uint8)
    for i in range(n):
        cells = rows[i].reshape(GRID)
        r0, c0 = rng.integers(0, GRID[0]), rng.integers(0, GRID[1])
        r1, c1 = rng.integers(r0 + 1, GRID[0] + 1), rng.integers(c0 + 1, GRID[1] + 1)
        cells[r0:r1, c0:c1] = rng.choice([0, 3, 7, IGNORE], size=(r1 - r0, c1 - c0))
        cells[rng.integers(0, GRID[0]), rng.integers(0, GRID[1])] = rng.integers(0, 11)
    return rows


@given(rows=context_rows())
@settings(max_examples=100, deadline=None)
def test_rows_round_trip(rows: np.ndarray) -> None:
    boxed = BoxedContexts.from_rows(rows, GRID)
    assert len(boxed) == len(rows)
    np.testing.assert_array_equal(boxed.rows(), rows)
    # Each box is the tightest around the present cells, and holds exactly its cells.
    np.testing.assert_array_equal(boxed.boxes.T, grid_boxes(rows != IGNORE, GRID))
    assert boxed.data.size == int(
        ((boxed.boxes[:, 2] - boxed.boxes[:, 0]) * (boxed.boxes[:, 3] - boxed.boxes[:, 1])).sum()
    )


@given(rows=context_rows(), seed=st.integers(0, 1000))
@settings(max_examples=50, deadline=None)
def test_take_and_concat(rows: np.ndarray, seed: int) -> None:
    boxed = BoxedContexts.from_rows(rows, GRID)
    picks = np.random.default_rng(seed).permutation(len(rows))[: max(0, len(rows) - 2)]
    np.testing.assert_array_equal(boxed.take(picks).rows(), rows[picks])
    np.testing.assert_array_equal(boxed.rows(picks), rows[picks])
    half = len(rows) // 2
    joined = BoxedContexts.concat(
        [BoxedContexts.from_rows(rows[:half], GRID), BoxedContexts.from_rows(rows[half:], GRID)], GRID
    )
    np.testing.assert_array_equal(joined.rows(), rows)


def test_mismatched_data_is_refused() -> None:
    with pytest.raises(ValueError, match="context cells"):
        BoxedContexts(np.array([[0, 0, 2, 2]], np.int16), np.zeros(3, np.uint8), GRID)


def test_real_contexts_shrink_and_round_trip(val_bank: Bank) -> None:
    dense = val_bank.context_rows()
    boxed = BoxedContexts.from_rows(dense, val_bank.config.fine_grid)
    np.testing.assert_array_equal(boxed.rows(), dense)
    assert boxed.nbytes < dense.nbytes / 5
