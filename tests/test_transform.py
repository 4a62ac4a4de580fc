"""Transformation network T: geometry, the identity no-op, the aligner's fallback, checkpoints, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import Bank
from memory_bank.errors import LayoutError
from synthesis.canvas.protocols import Aligner, BatchAligner
from synthesis.model_directory import from_pretrained, save_pretrained
from synthesis.networks.geometry import (
    apply_affine,
    avg_pool,
    box_iou,
    compose,
    identity_theta,
    invert,
    mask_box,
    mask_iou,
    sample_layout,
    warp_box,
    warp_segment,
    window_boxes,
    window_theta,
    window_to_frame,
)
from synthesis.networks.transform import TransformAligner, TransformConfig, TransformNet
from synthesis.training.optim import warmup_cosine_by_progress
from synthesis.training.transform import (
    PerturbConfig,
    TransformRunConfig,
    TransformTrainConfig,
    random_perturbation,
    train_transform,
)

torch.set_num_threads(1)

TINY = TransformConfig(num_classes=11, input_size=(16, 20), widths=(4, 8, 8), hidden=8, min_window=(8, 10))


def _rect(frame: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(frame, bool)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def _segment(frame: tuple[int, int], box: tuple[int, int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    mask = _rect(frame, box)
    pixels = np.random.default_rng(seed).integers(1, 256, (*frame, 3), dtype=np.uint8)
    pixels[~mask] = 0
    return pixels, mask


# ---------------------------------------------------------------- network


def test_net_shapes_dtype_and_identity_initialisation() -> None:
    net = TransformNet.from_config(TINY)
    b, (h, w) = 3, TINY.input_size
    theta = net(torch.rand(b, 11, h, w), torch.rand(b, 1, h, w), torch.rand(b, 3, h, w), torch.rand(b, 1, h, w))
    assert theta.shape == (b, 2, 3) and theta.dtype == torch.float32
    assert torch.equal(theta, identity_theta(b))  # zero last layer + identity bias


def test_net_rejects_wrong_input_size() -> None:
    net = TransformNet.from_config(TINY)
    x = torch.zeros(1, 11, 8, 8)
    with pytest.raises(ValueError, match="inputs must be"):
        net(x, x[:, :1], x[:, :3], x[:, :1])


def test_config_validation_and_round_trip() -> None:
    assert TransformConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="divisible"):
        TransformConfig(input_size=(30, 40), widths=(4, 8, 8))
    with pytest.raises(ValueError, match="not TransformNet"):
        TransformConfig.from_dict({**TINY.to_dict(), "_class_name": "OrderingNet"})


def test_checkpoint_round_trip_is_float16(tmp_path: Path) -> None:
    net = TransformNet.from_config(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    save_pretrained(net, tmp_path, dtype=torch.float16)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "TransformNet"
    loaded = from_pretrained(tmp_path)
    assert loaded.config == TINY
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v.half().float(), v2)
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------- geometry


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 1000))
def test_identity_theta_is_a_no_op(h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.6
    pixels = np.where(mask[..., None], rng.integers(0, 256, (h, w, 3)), 0).astype(np.uint8)
    out_pixels, out_mask = warp_segment(pixels, mask, identity_theta(1)[0].numpy())
    assert out_pixels.dtype == np.uint8 and out_mask.dtype == bool
    assert np.array_equal(out_pixels, pixels) and np.array_equal(out_mask, mask)


@pytest.mark.parametrize(("dy", "dx"), [(0, 5), (3, 0), (-2, -7)])
def test_integer_translation_moves_the_segment_exactly(dy: int, dx: int) -> None:
    frame = (30, 40)
    pixels, mask = _segment(frame, (10, 12, 20, 25))
    # Sampling convention: output(p) = input(theta p); a move by +d samples at p - d.
    theta = np.array([[1, 0, -2 * dx / frame[1]], [0, 1, -2 * dy / frame[0]]], np.float32)
    out_pixels, out_mask = warp_segment(pixels, mask, theta)
    assert np.array_equal(out_mask, np.roll(mask, (dy, dx), axis=(0, 1)))
    assert np.array_equal(out_pixels, np.roll(pixels, (dy, dx), axis=(0, 1)))


def test_apply_affine_batches_and_checks_shapes() -> None:
    p, m = torch.rand(2, 3, 8, 9), torch.ones(2, 1, 8, 9)
    out_p, out_m = apply_affine(p, m, identity_theta(2))
    assert out_p.shape == (2, 3, 8, 9) and out_m.shape == (2, 1, 8, 9) and out_m.dtype == torch.bool
    assert torch.allclose(out_p, p, atol=1e-5)
    with pytest.raises(ValueError, match="pixels must be"):
        apply_affine(p[:, :2], m, identity_theta(2))


def test_compose_and_invert() -> None:
    gen = torch.Generator().manual_seed(0)
    a = identity_theta(4) + 0.2 * torch.randn(4, 2, 3, generator=gen)
    assert torch.allclose(compose(a, invert(a)), identity_theta(4), atol=1e-5)


def test_window_covers_both_boxes_at_the_input_aspect() -> None:
    cfg = TransformConfig()
    target = torch.tensor([[100.0, 100.0, 140.0, 300.0]])
    segment = torch.tensor([[120.0, 150.0, 200.0, 220.0]])
    cy, cx, h, w = window_boxes(target, segment, cfg)[0].tolist()
    assert h / w == pytest.approx(cfg.input_size[0] / cfg.input_size[1])
    assert cy - h / 2 <= 100 and cy + h / 2 >= 200 and cx - w / 2 <= 100 and cx + w / 2 >= 300
    # Tiny boxes get the minimum window.
    tiny = torch.tensor([[10.0, 10.0, 12.0, 12.0]])
    assert window_boxes(tiny, tiny, cfg)[0, 2:].tolist() == [float(v) for v in cfg.min_window]


def test_window_theta_maps_window_edges_to_frame_pixels() -> None:
    frame = (360, 480)
    g = window_theta(torch.tensor([[90.0, 240.0, 60.0, 120.0]]), frame)
    corners = torch.tensor([[-1.0, 1.0], [-1.0, 1.0], [1.0, 1.0]])  # window (x, y) = (-1, -1) and (1, 1)
    fx, fy = (g[0] @ corners).tolist()
    assert [(fx[0] + 1) * frame[1] / 2, (fx[1] + 1) * frame[1] / 2] == pytest.approx([180, 300])
    assert [(fy[0] + 1) * frame[0] / 2, (fy[1] + 1) * frame[0] / 2] == pytest.approx([60, 120])
    # The identity in the window is the identity in the frame.
    assert torch.allclose(window_to_frame(identity_theta(1), g), identity_theta(1), atol=1e-6)


def test_random_perturbation_moves_boxes_where_the_warp_moves_masks() -> None:
    frame = (120, 160)
    boxes = torch.tensor([[30.0, 40.0, 70.0, 100.0], [10.0, 10.0, 50.0, 40.0]])
    theta, moved = random_perturbation(boxes, frame, PerturbConfig(), torch.Generator().manual_seed(3))
    for i in range(2):
        box = tuple(int(v) for v in boxes[i].tolist())
        pixels, mask = _segment(frame, box)
        _, warped = warp_segment(pixels, mask, theta[i].numpy())
        y0, x0, y1, x1 = mask_box(warped)
        assert np.allclose([y0, x0, y1, x1], moved[i].numpy(), atol=2.5)


def test_mask_iou_and_box() -> None:
    a, b = _rect((10, 10), (0, 0, 4, 4)), _rect((10, 10), (2, 2, 6, 6))
    assert mask_iou(a, b) == pytest.approx(4 / 28)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0
    assert mask_box(b) == (2, 2, 6, 6)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    assert warmup_cosine_by_progress(1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine_by_progress(1.0, 0.05) == pytest.approx(1.0)
    assert warmup_cosine_by_progress(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_by_progress(1.0, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_by_progress(1.0, 0.525) == pytest.approx(0.5)


# ---------------------------------------------------------------- the aligner


def _aligner_with_theta(theta_window: list[float], fallback: bool = True) -> TransformAligner:
    """An aligner whose network always answers ``theta_window`` (zero weights, that bias)."""
    net = TransformNet.from_config(TINY)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor(theta_window))
    return TransformAligner(net, TINY, fallback=fallback)


def test_untrained_aligner_returns_the_segment_unchanged() -> None:
    frame = (48, 64)
    layout = np.zeros(frame, np.uint8)
    pixels, mask = _segment(frame, (10, 10, 30, 40))
    target = _rect(frame, (12, 14, 32, 44))
    aligner = _aligner_with_theta([1, 0, 0, 0, 1, 0])
    assert isinstance(aligner, Aligner)
    out_pixels, out_mask = aligner(layout, target, pixels, mask)
    assert np.array_equal(out_pixels, pixels) and np.array_equal(out_mask, mask)
    assert aligner.calls == 1 and aligner.fallbacks == 0
    assert aligner.last is not None and aligner.last.iou_identity == aligner.last.iou_transformed


def test_aligner_falls_back_when_t_makes_it_worse_and_counts() -> None:
    frame = (48, 64)
    layout = np.zeros(frame, np.uint8)
    pixels, mask = _segment(frame, (10, 10, 30, 40))
    target = mask.copy()  # already perfect: any move is worse
    aligner = _aligner_with_theta([1, 0, 0.5, 0, 1, 0])
    out_pixels, out_mask = aligner(layout, target, pixels, mask)
    assert out_pixels is pixels and out_mask is mask
    assert aligner.fallbacks == 1 and aligner.last is not None and aligner.last.fell_back
    assert aligner.last.iou_transformed < aligner.last.iou_identity == 1.0
    # Without the fallback the moved segment comes back.
    raw = _aligner_with_theta([1, 0, 0.5, 0, 1, 0], fallback=False)
    moved_pixels, moved_mask = raw(layout, target, pixels, mask)
    assert moved_pixels.shape == pixels.shape and moved_pixels.dtype == np.uint8 and moved_mask.dtype == bool
    assert mask_iou(moved_mask, target) < 1.0 and raw.fallbacks == 0


def test_aligner_keeps_a_transform_that_helps() -> None:
    frame = (48, 64)
    layout = np.zeros(frame, np.uint8)
    pixels, mask = _segment(frame, (16, 20, 32, 40))
    aligner = _aligner_with_theta([1, 0, 0, 0, 1, 0])
    theta = aligner.predict_theta(layout, mask, pixels, mask)
    assert np.allclose(theta, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    # A window shift of +0.2 samples to the right, so it moves the segment left: a target there is helped.
    target = np.roll(mask, -4, axis=1)
    shifted = _aligner_with_theta([1, 0, 0.2, 0, 1, 0])
    out_pixels, out_mask = shifted(layout, target, pixels, mask)
    last = shifted.last
    assert last is not None and not last.fell_back and shifted.fallbacks == 0
    assert last.iou_transformed > last.iou_identity and last.iou == last.iou_transformed
    expected_pixels, expected_mask = warp_segment(pixels, mask, np.array(last.theta, np.float32).reshape(2, 3))
    assert np.array_equal(out_mask, expected_mask) and np.array_equal(out_pixels, expected_pixels)
    assert mask_box(out_mask)[1] < mask_box(mask)[1]  # moved left


def test_aligner_validates_inputs_and_skips_empty_masks() -> None:
    frame = (20, 30)
    layout = np.zeros(frame, np.uint8)
    pixels, mask = _segment(frame, (2, 2, 10, 10))
    aligner = _aligner_with_theta([1, 0, 0, 0, 1, 0])
    with pytest.raises(LayoutError):
        aligner(layout[None], mask, pixels, mask)
    with pytest.raises(ValueError, match="masks must match"):
        aligner(layout, mask[:5], pixels, mask)
    with pytest.raises(ValueError, match="uint8"):
        aligner(layout, mask, pixels.astype(np.float32), mask)
    empty = np.zeros(frame, bool)
    assert aligner(layout, empty, pixels, mask)[1] is mask and aligner.calls == 0


# ---------------------------------------------------------------- the batched path (align_many)


def _reference_warp(pixels: np.ndarray, mask: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full-frame warp: apply_affine over the whole frame, as warp_segment computed it before boxes."""
    p = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    m = torch.from_numpy(mask)[None, None].float()
    out_p, out_m = apply_affine(p * m, m, torch.as_tensor(np.asarray(theta, np.float32)).view(1, 2, 3))
    return out_p[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy(), out_m[0, 0].numpy()


def _random_theta(rng: np.random.Generator) -> np.ndarray:
    angle, scale, shear = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 1.6, 2), rng.uniform(-0.3, 0.3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a = rot @ np.array([[scale[0], shear], [0.0, scale[1]]])
    return np.concatenate([a, rng.uniform(-1.2, 1.2, (2, 1))], axis=1).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), c=st.integers(1, 4), k=st.integers(1, 4), seed=st.integers(0, 999))
def test_avg_pool_is_atens_ceil_mode_pool_bit_for_bit(h: int, w: int, c: int, k: int, seed: int) -> None:
    x = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(seed)) * 300
    assert torch.equal(avg_pool(x, k), F.avg_pool2d(x, k, ceil_mode=True))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_boxed_warp_equals_the_full_frame_warp(h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = (h, w)
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
    mask = _rect(frame, (y0, x0, y1, x1)) & (rng.random(frame) < 0.8)
    pixels = rng.integers(0, 256, (*frame, 3), dtype=np.uint8)  # not zero outside the mask: it must not leak
    theta = _random_theta(rng) if seed % 5 else np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    got_pixels, got_mask = warp_segment(pixels, mask, theta)
    want_pixels, want_mask = _reference_warp(pixels, mask, theta)
    assert np.array_equal(got_mask, want_mask) and np.array_equal(got_pixels, want_pixels)
    if mask.any():  # everything the full warp touches lies inside warp_box
        by0, bx0, by1, bx1 = warp_box(theta, mask_box(mask), frame)
        outside = np.ones(frame, bool)
        outside[by0:by1, bx0:bx1] = False
        assert not want_mask[outside].any() and not want_pixels[outside].any()


def test_warp_box_of_a_singular_or_far_transform() -> None:
    frame, box = (20, 30), (5, 5, 10, 10)
    assert warp_box(np.zeros((2, 3), np.float32), box, frame) == (0, 0, 20, 30)  # singular: the whole frame
    far = np.array([[1, 0, 5.0], [0, 1, 0]], np.float32)  # samples 2.5 frames to the right: nothing lands
    y0, x0, y1, x1 = warp_box(far, box, frame)
    assert (y1 - y0) * (x1 - x0) == 0
    pixels, mask = _segment(frame, box)
    out_pixels, out_mask = warp_segment(pixels, mask, far)
    assert not out_mask.any() and not out_pixels.any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_box_iou_equals_mask_iou(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.random((12, 15)) < 0.3, rng.random((12, 15)) < 0.2
    a[0, 0] = b[-1, -1] = True
    assert box_iou(a, mask_box(a), b, mask_box(b)) == mask_iou(a, b)
    assert box_iou(np.zeros_like(a), (0, 0, 0, 0), b, mask_box(b)) == 0.0


def test_sample_layout_one_hot_matches_torch_one_hot() -> None:
    labels = torch.tensor([[[0, 3, 255], [10, 11, 200]]], dtype=torch.uint8)  # 11 and 200: past the classes
    theta = identity_theta(2)
    got = sample_layout(labels, theta, (2, 3), 11)
    idx = torch.tensor([[1, 4, 0], [11, 11, 11]]).expand(2, 2, 3)  # class + 1, clamped to 11; 255 is none
    want = F.one_hot(idx, 12)[..., 1:].permute(0, 3, 1, 2).float()
    assert got.shape == (2, 11, 2, 3) and got.dtype == torch.float32 and torch.equal(got, want)


def _random_t(config: TransformConfig, seed: int, scale: float) -> TransformNet:
    """T with random weights (so transforms differ from the identity), heads scaled by ``scale``."""
    net = TransformNet.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        net.head.weight.mul_(scale)
        net.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
    return net


def _layout_segments(
    frame: tuple[int, int], seed: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A random layout with targets and retrieved segments: rectangles, blobs, frame edges and empty masks."""
    rng = np.random.default_rng(seed)
    h, w = frame
    layout = rng.integers(0, 11, frame).astype(np.uint8)
    layout[rng.random(frame) < 0.1] = 255
    targets, pixels, masks = [], [], []
    boxes = [(2, 3, 20, 25), (0, 0, h, w // 2), (h - 9, w - 13, h, w), (10, 20, 14, 23), (5, 5, 30, 40)]
    for i, box in enumerate(boxes):
        target = _rect(frame, box)
        dy, dx = int(rng.integers(-4, 5)), int(rng.integers(-4, 5))
        seg_pixels, seg_mask = _segment(frame, box, seed=seed + i)
        seg_mask = np.roll(seg_mask & (rng.random(frame) < 0.9), (dy, dx), axis=(0, 1))
        targets.append(target)
        pixels.append(np.roll(seg_pixels, (dy, dx), axis=(0, 1)))
        masks.append(seg_mask)
    masks.append(np.zeros(frame, bool))  # an empty segment
    targets.append(_rect(frame, (1, 1, 5, 5)))
    pixels.append(np.zeros((*frame, 3), np.uint8))
    pixels.append(pixels[0])  # an empty target
    masks.append(masks[0])
    targets.append(np.zeros(frame, bool))
    return layout, targets, pixels, masks


@pytest.mark.parametrize(("frame", "seed", "scale"), [((48, 64), 2, 0.05), ((47, 63), 1, 0.05), ((40, 52), 3, 0.2)])
def test_align_many_equals_the_per_segment_full_frame_path(frame: tuple[int, int], seed: int, scale: float) -> None:
    layout, targets, pixels, masks = _layout_segments(frame, seed)
    aligner = TransformAligner(_random_t(TINY, seed, scale), TINY, batch_size=3)  # batches of 3: chunks too
    assert isinstance(aligner, BatchAligner)
    out = aligner.align_many(layout, targets, pixels, masks)
    assert len(out) == len(masks) == len(aligner.last_batch)
    moved = fell_back = 0
    for i, (got_pixels, got_mask) in enumerate(out):
        assert got_pixels.dtype == np.uint8 and got_mask.dtype == bool and got_mask.shape == frame
        if not masks[i].any() or not targets[i].any():
            assert aligner.last_batch[i] is None and got_pixels is pixels[i] and got_mask is masks[i]
            continue
        # The reference: T on full frames (one segment at a time), the full-frame warp, full-frame IoUs.
        theta = aligner.predict_theta(layout, targets[i], pixels[i], masks[i])
        warped_pixels, warped_mask = _reference_warp(pixels[i], masks[i], theta)
        before, after = mask_iou(masks[i], targets[i]), mask_iou(warped_mask, targets[i])
        got = aligner.last_batch[i]
        assert got is not None and np.allclose(got.theta, theta.ravel(), atol=1e-5)
        assert got.fell_back == (after < before) and got.iou_identity == before
        assert got.iou_transformed == pytest.approx(after, abs=1e-3)
        want_pixels, want_mask = (pixels[i], masks[i]) if got.fell_back else (warped_pixels, warped_mask)
        assert np.array_equal(got_mask, want_mask)
        assert np.abs(got_pixels.astype(int) - want_pixels.astype(int)).max() <= 1  # float noise in rounding
        fell_back += got.fell_back
        moved += not got.fell_back and not np.array_equal(got_mask, masks[i])
    assert aligner.calls == 5 and aligner.fallbacks == fell_back
    assert moved > 0 and fell_back > 0  # the check saw kept transforms and fallbacks, not only identities
    # T one segment at a time: the boxed inputs are exactly the full-frame ones, so theta is bit for bit the same.
    exact = TransformAligner(_random_t(TINY, seed, scale), TINY, batch_size=1, channels_last=False)
    exact_out = exact.align_many(layout, targets, pixels, masks)
    for i, got in enumerate(exact.last_batch):
        if got is not None:
            theta = exact.predict_theta(layout, targets[i], pixels[i], masks[i])
            assert np.array_equal(np.array(got.theta, np.float32), theta.ravel())
            warped_pixels, warped_mask = _reference_warp(pixels[i], masks[i], theta)
            fell = mask_iou(warped_mask, targets[i]) < mask_iou(masks[i], targets[i])
            want_pixels, want_mask = (pixels[i], masks[i]) if fell else (warped_pixels, warped_mask)
            assert got.fell_back == fell
            assert np.array_equal(exact_out[i][0], want_pixels) and np.array_equal(exact_out[i][1], want_mask)
    # One segment through __call__ is the same as through align_many.
    one_pixels, one_mask = aligner(layout, targets[0], pixels[0], masks[0])
    assert np.array_equal(one_mask, out[0][1]) and np.abs(one_pixels.astype(int) - out[0][0].astype(int)).max() <= 1


def test_align_many_checks_its_inputs() -> None:
    frame = (20, 30)
    layout = np.zeros(frame, np.uint8)
    pixels, mask = _segment(frame, (2, 2, 10, 10))
    aligner = _aligner_with_theta([1, 0, 0, 0, 1, 0])
    assert aligner.align_many(layout, [], [], []) == []
    with pytest.raises(ValueError, match="targets"):
        aligner.align_many(layout, [mask], [pixels], [])
    with pytest.raises(ValueError, match="masks must match"):
        aligner.align_many(layout, [mask, mask[:5]], [pixels, pixels], [mask, mask])
    with pytest.raises(ValueError, match="batch_size"):
        TransformAligner(TransformNet.from_config(TINY), TINY, batch_size=0)


# ---------------------------------------------------------------- training


def test_training_smoke(val_bank: Bank, tmp_path: Path) -> None:
    cfg = TransformTrainConfig(steps=4, batch_size=3, val_samples=6, log_every=2, checkpoint_every=2, min_area=64)
    out = tmp_path / "run"
    result = train_transform(val_bank, out, TransformRunConfig(TINY, cfg), progress=False)
    summary = result.scores
    assert result.step == 4 and math.isfinite(summary["val_loss"])
    assert 0.0 <= summary["val_iou_perturbed"] <= 1.0 and 0.0 <= summary["val_iou_t"] <= 1.0
    assert {"checkpoints", "latest.json", "train_log.jsonl"} <= {p.name for p in out.iterdir()}
    model = from_pretrained(out)
    config = model.config
    assert config == TINY
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    # A finished run resumes to the same step and does nothing more.
    again = train_transform(val_bank, out, TransformRunConfig(TINY, cfg), resume=True, progress=False)
    assert again.step == 4
    aligner = TransformAligner(model, config)
    layout = np.asarray(val_bank.labels[0])
    seg = val_bank.segment(0)
    pixels = np.where(seg.mask[..., None], np.asarray(val_bank.photos[0]), 0).astype(np.uint8)
    out_pixels, out_mask = aligner(layout, seg.mask, pixels, seg.mask)
    assert out_pixels.shape == pixels.shape and out_mask.shape == seg.mask.shape
    assert mask_iou(out_mask, seg.mask) >= mask_iou(seg.mask, seg.mask) - 1e-12  # fallback: never worse


# ---------------------------------------------------------------- the shipped weights

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "transform"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "transform" / "camvid.json"


def test_shipped_weights_match_their_config_and_are_float16() -> None:
    from safetensors.torch import load_file

    assert from_pretrained(WEIGHTS).config == TransformRunConfig.load(CONFIG).model
    assert all(v.dtype == torch.float16 for v in load_file(str(WEIGHTS / "model.safetensors")).values())


def test_shipped_t_undoes_a_shift_of_real_segments(val_bank: Bank) -> None:
    aligner = TransformAligner.from_pretrained(WEIGHTS, fallback=False)
    ids = np.flatnonzero(val_bank.column("area") > 2000)[:5]
    for sid in ids:
        seg = val_bank.segment(int(sid))
        layout = np.asarray(val_bank.labels[seg.image_id])
        pixels = np.where(seg.mask[..., None], np.asarray(val_bank.photos[seg.image_id]), 0).astype(np.uint8)
        h, w = seg.mask.shape
        shift = np.array([[1, 0, -2 * 10 / w], [0, 1, -2 * 6 / h]], np.float32)  # 10 px right, 6 px down
        moved_pixels, moved_mask = warp_segment(pixels, seg.mask, shift)
        _, aligned = aligner(layout, seg.mask, moved_pixels, moved_mask)
        assert mask_iou(aligned, seg.mask) > mask_iou(moved_mask, seg.mask) + 0.02, int(sid)
