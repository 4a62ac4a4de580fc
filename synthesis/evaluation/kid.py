"""Kernel distance between image sets (KID) on the project's own segmenter features.

KID (Bińkowski et al., *Demystifying MMD GANs*, 2018) is the unbiased estimate of the squared
maximum mean discrepancy between two feature distributions, with the polynomial kernel
``k(x, y) = (x·y / d + 1)^3`` (``d`` the feature dimension). It is 0 in expectation when both
sets come from one distribution (the estimate can then be slightly negative) and grows as they
part.

The features here are NOT Inception's: they are the global-average-pooled deepest (bottleneck)
encoder activations of the evaluation segmenter (:class:`~synthesis.networks.segmenter.SegmentationNet`,
trained on real CamVid photos), computed on each image at its own resolution. Numbers are
comparable between rows of one report, not with the Inception-based FID/KID of papers.

Small verbs over arrays: :func:`kid` for the point estimate, :func:`kid_with_error` adds a
jackknife standard error; :func:`segmenter_features` turns images into feature rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)

from synthesis.networks.segmenter import SegmentationNet
from synthesis.tensors import image_tensor


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) kernel matrix ``(a @ b.T / d + 1) ** 3`` of (n, d) and (m, d) feature rows, float64."""
    a, b = _check_features(a, b, min_rows=1)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel between two feature sets (rows are samples).

    Needs at least two rows in each set. Multiply by 10³ for the usual reporting scale.
    """
    a, b = _check_features(features_a, features_b)
    kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    n, m = len(a), len(b)
    # Diagonal terms k(x, x) are what make the plain V-statistic biased: leave them out.
    saa = kaa.sum() - np.trace(kaa)
    sbb = kbb.sum() - np.trace(kbb)
    return float(saa / (n * (n - 1)) + sbb / (m * (m - 1)) - 2.0 * kab.sum() / (n * m))


def kid_with_error(features_a: np.ndarray, features_b: np.ndarray) -> tuple[float, float]:
    """``(kid, standard error)``: the estimate of :func:`kid` and its two-sample jackknife standard error.

    Each row of either set is left out in turn (closed form from the kernel matrices' row sums,
    no recomputation); the error is NaN when a set has fewer than three rows.
    """
    a, b = _check_features(features_a, features_b)
    kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    n, m = len(a), len(b)
    off_aa = kaa.sum(axis=1) - np.diag(kaa)  # each row's off-diagonal sum
    off_bb = kbb.sum(axis=1) - np.diag(kbb)
    saa, sbb, sab = off_aa.sum(), off_bb.sum(), kab.sum()
    estimate = float(saa / (n * (n - 1)) + sbb / (m * (m - 1)) - 2.0 * sab / (n * m))
    if n < 3 or m < 3:
        return estimate, float("nan")
    # Leaving out row i of a removes its row and column of k_aa and its row of k_ab.
    loo_a = (saa - 2 * off_aa) / ((n - 1) * (n - 2)) + sbb / (m * (m - 1)) - 2 * (sab - kab.sum(axis=1)) / ((n - 1) * m)
    loo_b = saa / (n * (n - 1)) + (sbb - 2 * off_bb) / ((m - 1) * (m - 2)) - 2 * (sab - kab.sum(axis=0)) / (n * (m - 1))
    variance = (n - 1) / n * np.sum((loo_a - loo_a.mean()) ** 2) + (m - 1) / m * np.sum((loo_b - loo_b.mean()) ** 2)
    return estimate, float(np.sqrt(variance))


@torch.no_grad()
def segmenter_features(segmenter: SegmentationNet, image: np.ndarray) -> np.ndarray:
    """(d,) float64 features of one (H, W, 3) uint8 image: the segmenter's bottleneck, global-average-pooled.

    The image is normalised as the segmenter's ``preprocess`` does but NOT resized: the encoder
    (``segmenter.down``, max-pooling between blocks, as in its ``forward``) runs at the image's own
    resolution, so fine detail the resizing would remove still reaches the features.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {a.dtype} {a.shape}")
    step = 2 ** (len(segmenter.down) - 1)
    if a.shape[0] < step or a.shape[1] < step:
        raise ValueError(f"image {a.shape[:2]} is smaller than the segmenter's total pooling {step}")
    device = segmenter.mean.device
    x = image_tensor(a)[None].to(device)
    x = (x - segmenter.mean) / segmenter.std
    was_training = segmenter.training
    segmenter.eval()  # BatchNorm with its running statistics, as at inference
    try:
        for i, block in enumerate(segmenter.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
    finally:
        segmenter.train(was_training)
    return x.mean(dim=(2, 3))[0].double().cpu().numpy()


def stack_features(rows: Iterable[np.ndarray]) -> np.ndarray:
    """(n, d) float64 array of feature rows (one per image); (0, 0) when there are none."""
    rows = [np.asarray(r, np.float64) for r in rows]
    return np.stack(rows) if rows else np.zeros((0, 0))


def _check_features(a: np.ndarray, b: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) feature arrays, got {a.shape} and {b.shape}")
    if len(a) < min_rows or len(b) < min_rows:
        raise ValueError(f"need at least {min_rows} feature rows per set, got {len(a)} and {len(b)}")
    return a, b


__all__ = ["kid", "kid_with_error", "polynomial_kernel", "segmenter_features", "stack_features"]
