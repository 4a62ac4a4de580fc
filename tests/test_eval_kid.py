"""KID on constructed feature sets, and the segmenter features it is computed on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthesis.evaluation.kid import kid, kid_with_error, polynomial_kernel, segmenter_features, stack_features
from synthesis.networks.segmenter import SegmentationNet

D = 16


def _features(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)) + shift


def test_polynomial_kernel_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 2.0]])
    # (x·y / 2 + 1)^3: (2/2 + 1)^3 = 8 and (4/2 + 1)^3 = 27
    np.testing.assert_allclose(polynomial_kernel(a, b), [[8.0], [27.0]])
    with pytest.raises(ValueError, match="feature arrays"):
        polynomial_kernel(a, np.ones((1, 3)))


def test_identical_feature_sets_have_kid_near_zero() -> None:
    a = _features(0, 200)
    shifted = kid(a, a + 1.0)
    # Not exactly 0: the same rows twice make the cross term include k(x, x). Slightly negative, O(1/n).
    assert -0.02 * shifted < kid(a, a) <= 0
    # Two independent samples of one distribution: unbiased, so near 0 and within a few errors of it.
    estimate, se = kid_with_error(a, _features(1, 200))
    assert abs(estimate) < 3 * se and abs(estimate) < 0.02 * shifted


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_kid_grows_with_the_shift(seed: int) -> None:
    a = _features(seed, 40)
    values = [kid(a, _features(seed + 1, 30, shift)) for shift in (0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert values[0] < values[1] < values[2]
    assert kid(_features(seed + 1, 30, 1.0), a) == pytest.approx(values[1])  # symmetric


def test_jackknife_error_matches_leaving_out_each_row() -> None:
    a, b = _features(2, 12), _features(3, 9, 0.3)
    estimate, se = kid_with_error(a, b)
    assert estimate == pytest.approx(kid(a, b))
    loo_a = np.array([kid(np.delete(a, i, 0), b) for i in range(len(a))])
    loo_b = np.array([kid(a, np.delete(b, j, 0)) for j in range(len(b))])
    n, m = len(a), len(b)
    variance = (n - 1) / n * ((loo_a - loo_a.mean()) ** 2).sum() + (m - 1) / m * ((loo_b - loo_b.mean()) ** 2).sum()
    assert se == pytest.approx(np.sqrt(variance))
    assert np.isnan(kid_with_error(a[:2], b)[1])  # too few rows for the jackknife
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b)


def test_stack_features() -> None:
    assert stack_features([]).shape == (0, 0)
    assert stack_features([np.ones(3), np.zeros(3)]).shape == (2, 3)


def test_segmenter_features_are_the_pooled_bottleneck_at_the_image_size() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(num_classes=3, widths=(4, 8, 6), resolution=(16, 24)).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # not the trained resolution: not resized
    got = segmenter_features(net, image)
    assert got.shape == (6,) and got.dtype == np.float64
    # The same activations through forward(): hook the deepest encoder block.
    seen: list[torch.Tensor] = []
    hook = net.down[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - net.mean) / net.std
    with torch.no_grad():
        net(x)
    hook.remove()
    assert seen[0].shape[-2:] == (10, 14)  # 40x56 pooled twice
    np.testing.assert_allclose(got, seen[0].mean(dim=(2, 3))[0].double().numpy(), rtol=1e-5, atol=1e-6)
    # Training mode is restored, BatchNorm statistics untouched.
    net.train()
    before = net.down[0][1].running_mean.clone()
    segmenter_features(net, image)
    assert net.training and torch.equal(before, net.down[0][1].running_mean)


def test_segmenter_features_check_their_input() -> None:
    net = SegmentationNet(num_classes=3, widths=(4, 8, 6), resolution=(16, 24))
    with pytest.raises(ValueError, match="uint8"):
        segmenter_features(net, np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="pooling"):
        segmenter_features(net, np.zeros((3, 16, 3), np.uint8))
