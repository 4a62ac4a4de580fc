"""Mapping between a pixel frame and a coarser grid of cells.

Pixel row ``r`` of a frame of height ``H`` falls in grid row ``r * gh // H`` (likewise for
columns), so grids need not divide the frame evenly. Every grid code in SIMS goes through
these functions, for bank segments and query components alike.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from memory_bank.config import Grid


@lru_cache(maxsize=32)
def cell_index(frame: Grid, grid: Grid) -> np.ndarray:
    """(H, W) int64 map from each pixel to its flat cell index ``row * gw + col``."""
    (h, w), (gh, gw) = frame, grid
    if gh > h or gw > w:
        raise ValueError(f"grid {grid} is finer than the frame {frame}")
    rows = np.arange(h, dtype=np.int64) * gh // h
    cols = np.arange(w, dtype=np.int64) * gw // w
    out = rows[:, None] * gw + cols[None, :]
    out.setflags(write=False)
    return out


@lru_cache(maxsize=32)
def cell_pixel_counts(frame: Grid, grid: Grid) -> np.ndarray:
    """(gh * gw,) number of pixels in each cell."""
    out = np.bincount(cell_index(frame, grid).ravel(), minlength=grid[0] * grid[1])
    out.setflags(write=False)
    return out


@lru_cache(maxsize=32)
def cell_centers(frame: Grid, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the cells' rows and columns, in continuous pixel coordinates."""
    (h, w), (gh, gw) = frame, grid
    # Cell i covers pixels [ceil(i*H/gh), ceil((i+1)*H/gh)); its centre is the mean of the edges.
    ry = np.ceil(np.arange(gh + 1) * h / gh)
    rx = np.ceil(np.arange(gw + 1) * w / gw)
    return (ry[:-1] + ry[1:]) / 2, (rx[:-1] + rx[1:]) / 2


def label_counts(index_map: np.ndarray, n_cells: int, values: np.ndarray, n_values: int) -> np.ndarray:
    """(n_cells, n_values) count of pixels of each value (0..n_values-1) in each cell."""
    flat = index_map.ravel() * n_values + values.ravel().astype(np.int64)
    return np.bincount(flat, minlength=n_cells * n_values).reshape(n_cells, n_values)
