"""IoU from counts, the one definition: retrieval scores and their bounds, the brute-force
reference, mask IoUs of the aligner, per-class IoUs of a confusion matrix.

Integers are counted exactly by the callers and divided here in float64, so every path gives
bit-identical scores. :func:`iou_scalar` is the same arithmetic for numba kernels.
"""

from __future__ import annotations

import numba
import numpy as np


def iou64(inter: np.ndarray, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """IoU from counts: ``inter / (a + b - inter)`` in float64, 0 where the union is empty."""
    inter = np.asarray(inter, np.float64)
    union = np.asarray(a, np.float64) + np.asarray(b, np.float64) - inter
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)


@numba.njit(cache=True, nogil=True, inline="always")
def iou_scalar(inter: float, a: float, b: float) -> float:
    """:func:`iou64` of one pair, for numba kernels (which cannot call numpy's masked divide per
    element); the same float64 operations, so scores are bit-identical (tests hold them so)."""
    union = a + b - inter
    return inter / union if union > 0 else 0.0
