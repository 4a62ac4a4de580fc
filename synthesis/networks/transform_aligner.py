"""The aligner that runs T (:mod:`synthesis.networks.transform`) in the canvas builder, falling back to the identity.

It implements ``Aligner`` and ``BatchAligner`` of :mod:`synthesis.canvas.protocols`; the geometry it warps
with is :mod:`synthesis.networks.geometry`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)

from memory_bank.errors import LayoutError
from synthesis.networks.geometry import (
    avg_pool,
    box_iou,
    mask_box,
    sample_layout,
    tensor_view,
    warp_in_box,
    window_boxes,
    window_theta,
    window_to_frame,
)
from synthesis.networks.transform import TransformConfig, TransformNet, window_inputs


@dataclass(frozen=True)
class Alignment:
    """What the aligner did to one segment: IoUs with the target before and after T, and whether it fell back."""

    iou_identity: float
    iou_transformed: float
    fell_back: bool
    theta: tuple[float, ...]  # frame-coordinate theta T proposed, row-major

    @property
    def iou(self) -> float:
        """IoU of the segment that was returned."""
        return self.iou_identity if self.fell_back else self.iou_transformed


@dataclass(frozen=True)
class BoxedSegment:
    """One segment to place and its target, with both masks' boxes: what :meth:`TransformAligner.predict_thetas`
    and the warp after it work on (both masks non-empty)."""

    target: np.ndarray  # (H, W) bool, the layout component to fill
    pixels: np.ndarray  # (H, W, 3) uint8, zero outside ``mask``
    mask: np.ndarray  # (H, W) bool, where the segment lay in its source photo
    target_box: tuple[int, int, int, int]  # mask_box(target)
    box: tuple[int, int, int, int]  # mask_box(mask)


class TransformAligner:
    """Aligner (``synthesis.canvas.protocols.Aligner``) that runs T, falling back to the identity when T hurts.

    The target mask is known where the aligner runs (it is the layout component the segment fills), so the
    aligner keeps T's transform only when the warped mask's IoU with the target is at least the unwarped
    one's. ``calls``, ``fallbacks`` and ``last`` record what happened; ``last_batch`` holds the
    :class:`Alignment` of every segment of the last :meth:`align_many` (None where a mask was empty).

    :meth:`align_many` (the canvas builder's path) aligns all segments of a layout together: one forward of T,
    inputs and warps computed on the segments' boxes instead of full frames. ``batch_size`` segments go
    through T at a time, with channels-last weights unless ``channels_last`` is False. Its results are
    those of :meth:`predict_theta` + :func:`warp_segment` per segment up to float noise in T's batched
    forward (about 1e-6 in ``theta``); with ``batch_size=1`` and ``channels_last=False`` they are the
    full-frame per-segment results bit for bit, at about a quarter more time.
    """

    def __init__(
        self,
        model: TransformNet,
        config: TransformConfig,
        fallback: bool = True,
        batch_size: int = 64,
        channels_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Channels-last: oneDNN's convolutions over T's 18 input channels run about twice as fast on CPU.
        # The model is put in eval mode and in that memory format in place.
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(memory_format=fmt)
        self.config = config
        self.fallback = fallback
        self.batch_size = batch_size
        self.calls = 0
        self.fallbacks = 0
        self.last: Alignment | None = None
        self.last_batch: list[Alignment | None] = []

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, fallback: bool = True, batch_size: int = 64, channels_last: bool = True
    ) -> TransformAligner:
        """Load T from a model directory."""
        model = TransformNet.from_pretrained(directory)
        return cls(model, model.config, fallback, batch_size, channels_last)

    def reset_counts(self) -> None:
        """Zero ``calls`` and ``fallbacks``."""
        self.calls = 0
        self.fallbacks = 0

    @torch.no_grad()
    def predict_theta(
        self, layout: np.ndarray, target_mask: np.ndarray, pixels: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """T's (2, 3) transform in frame coordinates for one segment (both masks non-empty).

        The reference path: full frames through :func:`window_inputs`, as in training. :meth:`align_many`
        computes the same inputs on the segments' boxes.
        """
        frame = layout.shape
        tb = torch.tensor([mask_box(target_mask)], dtype=torch.float32)
        sb = torch.tensor([mask_box(mask)], dtype=torch.float32)
        g = window_theta(window_boxes(tb, sb, self.config), frame)
        m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
        p = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255.0 * m
        t = torch.from_numpy(np.ascontiguousarray(target_mask))[None, None].float()
        lab = torch.from_numpy(np.ascontiguousarray(layout))[None]
        k = self.config.work_scale
        if k > 1:  # the reduced frames T was trained on
            lab, (t, p, m) = lab[:, ::k, ::k], (F.avg_pool2d(x, k, ceil_mode=True) for x in (t, p, m))
        inputs = window_inputs(lab, t, p, m, g, g, self.config)
        theta_w = self.model(*inputs)
        return window_to_frame(theta_w, g)[0].numpy()

    @torch.no_grad()
    def predict_thetas(self, layout: np.ndarray, segments: Sequence[BoxedSegment]) -> np.ndarray:
        """(B, 2, 3) frame-coordinate transforms of the B ``segments`` on ``layout``.

        The inputs :meth:`predict_theta` samples from full reduced frames, sampled from frames that hold only
        the box of each mask (all else is zero there anyway), pooled from box crops aligned to ``work_scale``:
        the same numbers. T then runs once per ``batch_size`` segments.
        """
        cfg = self.config
        frame = layout.shape
        k = cfg.work_scale
        g = window_theta(
            window_boxes(
                torch.tensor(np.asarray([s.target_box for s in segments], np.float32).reshape(-1, 4)),
                torch.tensor(np.asarray([s.box for s in segments], np.float32).reshape(-1, 4)),
                cfg,
            ),
            frame,
        )
        lab = torch.from_numpy(np.ascontiguousarray(layout[::k, ::k]))[None]
        layout_onehot = sample_layout(lab, g, cfg.input_size, cfg.num_classes)
        # One reduced frame, reused: channel 0 the target, 1-3 the colours, 4 the mask.
        reduced = torch.zeros(1, 5, -(-frame[0] // k), -(-frame[1] // k))
        # sample() per segment, with the grids made in one call and the supersampling pooled in one call.
        (h, w), ss = cfg.input_size, cfg.supersample
        grids = F.affine_grid(g, [len(segments), 5, h * ss, w * ss], align_corners=False)
        windows = torch.empty(len(segments), 5, h * ss, w * ss)
        for i, segment in enumerate(segments):
            tbox, (ty0, tx0, ty1, tx1) = _work_box(segment.target_box, frame, k)
            sbox, (sy0, sx0, sy1, sx1) = _work_box(segment.box, frame, k)
            reduced[0, :1, ty0:ty1, tx0:tx1] = avg_pool(tensor_view(segment.target[tbox])[None].float(), k)
            # predict_theta's pixels / 255 * mask: with a 0/1 mask, (pixels * mask) / 255 is the same number.
            seg = torch.empty(4, *segment.mask[sbox].shape)
            seg[:3].copy_(tensor_view(segment.pixels[sbox]).permute(2, 0, 1))
            seg[3].copy_(tensor_view(segment.mask[sbox]))
            seg[:3].mul_(seg[3]).div_(255.0)
            reduced[0, 1:, sy0:sy1, sx0:sx1] = avg_pool(seg, k)
            windows[i : i + 1] = F.grid_sample(
                reduced, grids[i : i + 1], mode="bilinear", padding_mode="zeros", align_corners=False
            )
            reduced[0, :1, ty0:ty1, tx0:tx1] = 0.0
            reduced[0, 1:, sy0:sy1, sx0:sx1] = 0.0
        windows = avg_pool(windows, ss)
        thetas = []
        for s in range(0, len(segments), self.batch_size):
            part = slice(s, s + self.batch_size)
            x = windows[part]
            thetas.append(self.model(layout_onehot[part], x[:, :1], x[:, 1:4], x[:, 4:]))
        return window_to_frame(torch.cat(thetas), g).numpy()

    def align_many(
        self,
        layout: np.ndarray,
        targets: Sequence[np.ndarray],
        pixels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Align all segments of one layout: ``[(pixels (H, W, 3) uint8, mask (H, W) bool)]``, one per segment.

        The same as calling the aligner on each segment (``BatchAligner`` in ``synthesis.canvas.protocols``);
        segments or targets with empty masks come back unchanged.
        """
        if not len(targets) == len(pixels) == len(masks):
            raise ValueError(f"{len(targets)} targets, {len(pixels)} pixel arrays and {len(masks)} masks")
        for t, p, m in zip(targets, pixels, masks, strict=True):
            _check(layout, t, p, m)
        out: list[tuple[np.ndarray, np.ndarray]] = [(p, m) for p, m in zip(pixels, masks, strict=True)]
        # A list of this call's own: concurrent syntheses share the aligner (a 500 under load otherwise).
        batch: list[Alignment | None] = [None] * len(masks)
        self.last_batch = batch
        active = [i for i in range(len(masks)) if masks[i].any() and targets[i].any()]
        if not active:
            return out
        segments = [
            BoxedSegment(targets[i], pixels[i], masks[i], mask_box(targets[i]), mask_box(masks[i])) for i in active
        ]
        thetas = self.predict_thetas(layout, segments)
        scratch = torch.zeros(1, 4, *layout.shape)
        for i, s, theta in zip(active, segments, thetas, strict=True):
            self.calls += 1
            new_pixels, new_mask, new_box = warp_in_box(s.pixels, s.mask, theta, s.box, scratch)
            before = box_iou(s.mask, s.box, s.target, s.target_box)
            after = box_iou(new_mask, new_box, s.target, s.target_box)
            fell_back = self.fallback and after < before
            self.fallbacks += int(fell_back)
            self.last = batch[i] = Alignment(before, after, fell_back, tuple(float(v) for v in theta.ravel()))
            if not fell_back:
                out[i] = (new_pixels, new_mask)
        return out

    def __call__(
        self, layout: np.ndarray, target_mask: np.ndarray, pixels: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Align one segment: ``(pixels (H, W, 3) uint8, mask (H, W) bool)`` in, the same out."""
        return self.align_many(layout, [target_mask], [pixels], [mask])[0]


def _work_box(
    box: tuple[int, int, int, int], frame: tuple[int, int], k: int
) -> tuple[tuple[slice, slice], tuple[int, int, int, int]]:
    """``box`` grown to ``k``-aligned edges (or the frame's): its slices in the frame and its reduced box."""
    y0, x0, y1, x1 = box
    y0, x0 = y0 - y0 % k, x0 - x0 % k
    y1, x1 = min(frame[0], -(-y1 // k) * k), min(frame[1], -(-x1 // k) * k)
    return (slice(y0, y1), slice(x0, x1)), (y0 // k, x0 // k, -(-y1 // k), -(-x1 // k))


def _check(layout: np.ndarray, target_mask: np.ndarray, pixels: np.ndarray, mask: np.ndarray) -> None:
    if layout.ndim != 2:
        raise LayoutError(f"layout must be (H, W), got shape {layout.shape}")
    frame = layout.shape
    if target_mask.shape != frame or mask.shape != frame:
        raise ValueError(f"masks must match the layout's {frame}, got {target_mask.shape} and {mask.shape}")
    if pixels.shape != (*frame, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be (H, W, 3) uint8 for frame {frame}, got {pixels.shape} {pixels.dtype}")
    if target_mask.dtype != bool or mask.dtype != bool:
        raise ValueError(f"masks must be bool, got {target_mask.dtype} and {mask.dtype}")


__all__ = ["Alignment", "TransformAligner"]
