"""Transformation network T (paper §4.3): a spatial transformer that aligns a retrieved segment to its target.

T looks at a window around the target component and the retrieved segment (the union of their boxes,
enlarged, at the aspect of the network input) and predicts a 2D affine transform, as a spatial
transformer does: its last layer starts at zero with an identity bias, so an untrained T is the identity.

Conventions (one for the whole module): a transform ``theta`` is a (2, 3) matrix in torch's normalised
coordinates with ``align_corners=False`` (``-1`` and ``1`` are the outer edges of the frame), mapping
*output* points to the *input* points they sample, as :func:`torch.nn.functional.affine_grid` does. T predicts
``theta`` in window coordinates; :func:`window_to_frame` turns it into frame coordinates, where
:func:`apply_affine` warps the full-resolution segment.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from torch import nn

from memory_bank.classes import IGNORE
from memory_bank.errors import LayoutError
from retrieval_service.iou import iou64
from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.networks.conv_block import conv_block
from synthesis.tensors import one_hot


@dataclass(frozen=True)
class TransformConfig(NetworkConfig):
    """Constructor arguments of :class:`TransformNet` and the window it sees; saved as ``config.json``.

    Attributes:
        num_classes: layout classes (one-hot channels; unlabelled and off-frame pixels are all-zero).
        input_size: (h, w) of the window the network sees.
        widths: channels of the stem convolution, then of each stride-2 convolution.
        hidden: width of the fully connected layer before the six affine parameters.
        window_margin: the union of the two boxes is enlarged by this factor about its centre.
        min_window: smallest window (h, w) in frame pixels, so tiny segments keep some surroundings.
        supersample: windows are sampled at this multiple of ``input_size`` and average-pooled (anti-aliasing).
        work_scale: frames are average-pooled by this factor before windows are sampled from them (training
            reads frames at this reduced size to save time; the aligner does the same so T sees alike inputs).
    """

    num_classes: int = 11
    input_size: tuple[int, int] = (64, 80)
    widths: tuple[int, ...] = (16, 32, 48, 64, 64)
    hidden: int = 128
    window_margin: float = 1.25
    min_window: tuple[int, int] = (48, 60)
    supersample: int = 2
    work_scale: int = 2

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable.
        for name in ("input_size", "widths", "min_window"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.widths) < 2:
            raise ValueError(f"widths needs a stem and at least one stride-2 stage, got {self.widths}")
        factor = 2 ** (len(self.widths) - 1)
        if any(s % factor for s in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be divisible by {factor} for widths {self.widths}")
        if self.window_margin < 1.0:
            raise ValueError(f"window_margin must be >= 1, got {self.window_margin}")
        if self.supersample < 1 or self.work_scale < 1:
            raise ValueError(f"supersample and work_scale must be >= 1, got {self.supersample}, {self.work_scale}")


class TransformNet(PretrainedNetwork, config_class=TransformConfig, kind="transformation network"):
    """CNN from (layout, target mask, segment pixels, segment mask) windows to an affine ``theta``.

    Inputs, all (B, ., h, w) float at ``input_size``: ``layout`` one-hot (B, K, h, w), ``target`` (B, 1, h, w)
    in [0, 1], ``pixels`` (B, 3, h, w) in [0, 1] (zero outside the segment), ``mask`` (B, 1, h, w) in [0, 1].
    Two coordinate channels are added inside (CoordConv), so the flattened head can tell where things are.
    Output: (B, 2, 3) ``theta`` in window coordinates; identity at initialisation. The window
    arguments do not change the layers: they are how the aligner cuts T's windows, kept in ``config``.
    """

    def __init__(
        self,
        num_classes: int = 11,
        input_size: tuple[int, int] = TransformConfig.input_size,
        widths: tuple[int, ...] = TransformConfig.widths,
        hidden: int = TransformConfig.hidden,
        window_margin: float = TransformConfig.window_margin,
        min_window: tuple[int, int] = TransformConfig.min_window,
        supersample: int = TransformConfig.supersample,
        work_scale: int = TransformConfig.work_scale,
    ) -> None:
        super().__init__()
        self.config = TransformConfig(
            num_classes, input_size, widths, hidden, window_margin, min_window, supersample, work_scale
        )
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        in_ch = num_classes + 1 + 3 + 1 + 2
        layers = [conv_block(in_ch, widths[0], 1)]
        layers += [conv_block(a, b, 2) for a, b in itertools.pairwise(widths)]
        self.features = nn.Sequential(*layers)
        factor = 2 ** (len(widths) - 1)
        flat = widths[-1] * (input_size[0] // factor) * (input_size[1] // factor)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.LeakyReLU(0.2, inplace=True))
        self.head = nn.Linear(hidden, 6)
        # Spatial-transformer initialisation: zero weights and an identity bias, so T starts as a no-op.
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(
        self, layout: torch.Tensor, target: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = layout.shape
        if (h, w) != self.input_size:
            raise ValueError(f"inputs must be {self.input_size}, got {(h, w)}")
        ys = torch.linspace(-1, 1, h, device=layout.device, dtype=layout.dtype)
        xs = torch.linspace(-1, 1, w, device=layout.device, dtype=layout.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)
        x = torch.cat([layout, target, pixels, mask, coords], dim=1)
        return self.head(self.fc(self.features(x))).view(b, 2, 3)


# ---------------------------------------------------------------- geometry


def identity_theta(batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 2, 3) identity transforms."""
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype).expand(batch, 2, 3).clone()


def to_3x3(theta: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine matrices as (B, 3, 3) homogeneous ones."""
    last = torch.zeros(theta.shape[0], 1, 3, dtype=theta.dtype, device=theta.device)
    last[:, 0, 2] = 1.0
    return torch.cat([theta, last], dim=1)


def compose(*thetas: torch.Tensor) -> torch.Tensor:
    """Product ``thetas[0] @ thetas[1] @ ...`` of (B, 2, 3) transforms (sampling through the last one first)."""
    out = to_3x3(thetas[0])
    for t in thetas[1:]:
        out = out @ to_3x3(t)
    return out[:, :2]


def invert(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of (B, 2, 3) transforms."""
    return torch.linalg.inv(to_3x3(theta))[:, :2]


class WindowShape(Protocol):
    """What :func:`window_boxes` reads of a network's config (:class:`TransformConfig`, ``OrderingConfig``)."""

    @property
    def input_size(self) -> tuple[int, int]: ...
    @property
    def window_margin(self) -> float: ...
    @property
    def min_window(self) -> tuple[int, int]: ...


def window_boxes(boxes_a: torch.Tensor, boxes_b: torch.Tensor, config: WindowShape) -> torch.Tensor:
    """Windows a network sees: (B, 4) ``[cy, cx, h, w]`` in frame pixels, from two (B, 4) ``[y0, x0, y1, x1)`` boxes.

    The union of both boxes, enlarged by ``window_margin``, widened to the aspect of ``input_size`` and to at
    least ``min_window``. Windows may reach past the frame; what lies there reads as empty. T windows a target
    and a retrieved segment; the ordering network two neighbouring segments.
    """
    y0 = torch.minimum(boxes_a[:, 0], boxes_b[:, 0])
    x0 = torch.minimum(boxes_a[:, 1], boxes_b[:, 1])
    y1 = torch.maximum(boxes_a[:, 2], boxes_b[:, 2])
    x1 = torch.maximum(boxes_a[:, 3], boxes_b[:, 3])
    aspect = config.input_size[0] / config.input_size[1]
    h = (y1 - y0).clamp(min=1.0) * config.window_margin
    w = (x1 - x0).clamp(min=1.0) * config.window_margin
    h, w = torch.maximum(h, w * aspect), torch.maximum(w, h / aspect)
    h = torch.maximum(h, torch.full_like(h, float(config.min_window[0])))
    w = torch.maximum(w, torch.full_like(w, float(config.min_window[1])))
    h, w = torch.maximum(h, w * aspect), torch.maximum(w, h / aspect)
    return torch.stack([(y0 + y1) / 2, (x0 + x1) / 2, h, w], dim=1)


def window_theta(windows: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
    """(B, 2, 3) maps from window coordinates to frame coordinates, for (B, 4) ``[cy, cx, h, w]`` windows."""
    fh, fw = frame
    cy, cx, h, w = windows.unbind(1)
    zero = torch.zeros_like(cy)
    row0 = torch.stack([w / fw, zero, 2 * cx / fw - 1], dim=1)
    row1 = torch.stack([zero, h / fh, 2 * cy / fh - 1], dim=1)
    return torch.stack([row0, row1], dim=1)


def window_to_frame(theta_window: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A transform predicted in window coordinates, in frame coordinates: ``G theta G^-1``."""
    return compose(g, theta_window, invert(g))


def sample(frames: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], supersample: int = 1) -> torch.Tensor:
    """Bilinear samples of (B, C, H, W) ``frames`` on the (h, w) grid of ``theta``, zero outside.

    With ``supersample`` > 1 the grid is that many times finer and then average-pooled, so windows much
    larger than ``size`` do not alias (thin poles stay visible as partial coverage).
    """
    h, w = size
    grid = F.affine_grid(
        theta, [frames.shape[0], frames.shape[1], h * supersample, w * supersample], align_corners=False
    )
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return avg_pool(out, supersample)


def avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.avg_pool2d(x, k, ceil_mode=True)`` of (..., H, W) ``x``, bit for bit, in a few whole-tensor adds.

    ATen's CPU kernel loops cell by cell; this sums the ``k * k`` strided views in the kernel's order (row by
    row, starting from zero) and divides by the count of real pixels per cell (partial cells at the far
    edges, as ceil mode has them), so the numbers are the same, two to three times faster.
    """
    if k == 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = -h % k, -w % k
    padded = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
    total = padded[..., ::k, ::k].clone()
    for dy in range(k):
        for dx in range(k):
            if dy or dx:
                total.add_(padded[..., dy::k, dx::k])
    if not (ph or pw):
        return total.div_(k * k)
    rows = torch.full((total.shape[-2], 1), float(k))
    cols = torch.full((1, total.shape[-1]), float(k))
    if ph:
        rows[-1] = k - ph
    if pw:
        cols[0, -1] = k - pw
    return total.div_(rows * cols)


def sample_layout(labels: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], num_classes: int) -> torch.Tensor:
    """One-hot (B, K, h, w) of (B, H, W) label maps sampled (nearest) on ``theta``'s grid.

    ``labels`` may also be one (1, H, W) map for all B grids. Unlabelled (255) and off-frame pixels get no
    class: labels are shifted by one so that grid_sample's zero padding means "outside", then one-hot encoded.
    """
    lab = labels.long()
    shifted = (lab + 1).masked_fill(lab == IGNORE, 0).unsqueeze(1).float()
    b = theta.shape[0]
    if shifted.shape[0] != b:
        shifted = shifted.expand(b, -1, -1, -1)
    grid = F.affine_grid(theta, [b, 1, *size], align_corners=False)
    near = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    idx = near[:, 0].round().clamp(0, num_classes).long()  # (B, h, w) class + 1, 0 = none
    return one_hot(idx - 1, num_classes)


def apply_affine(pixels: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp segments by frame-coordinate ``theta`` (B, 2, 3), keeping their frame size.

    Args:
        pixels: (B, 3, H, W) float colours, zero outside the segment.
        mask: (B, 1, H, W) float in [0, 1].
    Returns:
        ``(pixels, mask)``: (B, 3, H, W) float colours, zero outside the new mask, and the (B, 1, H, W) bool
        mask (warped coverage >= 0.5). Colours are divided by the warped coverage, so the black outside the
        segment does not bleed into its border.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3 or mask.shape != (pixels.shape[0], 1, *pixels.shape[2:]):
        raise ValueError(f"pixels must be (B, 3, H, W) and mask (B, 1, H, W), got {pixels.shape} and {mask.shape}")
    grid = F.affine_grid(theta.to(pixels.dtype), list(pixels.shape), align_corners=False)
    both = F.grid_sample(torch.cat([pixels, mask], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cover = both[:, 3:]
    out_mask = cover >= 0.5
    out_pixels = torch.where(out_mask, both[:, :3] / cover.clamp(min=1e-6), torch.zeros_like(both[:, :3]))
    return out_pixels, out_mask


def warp_segment(pixels: np.ndarray, mask: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apply_affine` for one segment in numpy: (H, W, 3) uint8 and (H, W) bool in, the same out.

    The same numbers as :func:`apply_affine` on the full frame, computed only inside the box of output pixels
    the segment can reach (:func:`warp_box`); the rest of the frame is empty either way.
    """
    box = mask_box(mask) if mask.any() else None
    scratch = torch.zeros(1, 4, *mask.shape)
    out_pixels, out_mask, _ = _warp_in_box(pixels, mask, np.asarray(theta, np.float32).reshape(2, 3), box, scratch)
    return out_pixels, out_mask


def warp_box(theta: np.ndarray, box: tuple[int, int, int, int], frame: tuple[int, int]) -> tuple[int, int, int, int]:
    """End-exclusive ``(y0, x0, y1, x1)`` box of the output pixels that bilinear sampling through frame-coordinate
    ``theta`` (2, 3) can draw from input pixels inside ``box``; everything outside it samples zeros.

    A pixel ``j`` of the input contributes to sample points strictly within one pixel of it, so the open
    rectangle ``(x0 - 1, x1) x (y0 - 1, y1)`` (pixel-centre coordinates) is mapped back through ``theta``'s
    inverse; a singular ``theta`` gives the whole frame. (Plain floats: this runs once per segment.)
    """
    fh, fw = frame
    whole = (0, 0, fh, fw)
    (a00, a01, a02), (a10, a11, a12) = (tuple(float(v) for v in row) for row in np.asarray(theta).reshape(2, 3))
    # In pixel coordinates (align_corners=False: p = s * u + o per axis), input = m @ output + c.
    sx, sy, ox, oy = fw / 2, fh / 2, (fw - 1) / 2, (fh - 1) / 2
    m00, m01, m10, m11 = a00, a01 * sx / sy, a10 * sy / sx, a11
    cx = sx * a02 + ox - (m00 * ox + m01 * oy)
    cy = sy * a12 + oy - (m10 * ox + m11 * oy)
    det = m00 * m11 - m01 * m10
    if not math.isfinite(det) or abs(det) < 1e-12:
        return whole
    xs, ys = [], []
    y0, x0, y1, x1 = box
    for x in (x0 - 1, x1):
        for y in (y0 - 1, y1):
            dx, dy = x - cx, y - cy
            xs.append((m11 * dx - m01 * dy) / det)
            ys.append((m00 * dy - m10 * dx) / det)
    if not all(math.isfinite(v) for v in xs + ys):
        return whole
    # One pixel of margin on each side against rounding in the float32 grid.
    return (
        int(min(max(math.floor(min(ys)) - 1, 0), fh)),
        int(min(max(math.floor(min(xs)) - 1, 0), fw)),
        int(min(max(math.ceil(max(ys)) + 2, 0), fh)),
        int(min(max(math.ceil(max(xs)) + 2, 0), fw)),
    )


@functools.lru_cache(maxsize=4)
def _frame_base_grid(frame: tuple[int, int]) -> torch.Tensor:
    """:func:`torch.nn.functional.affine_grid`'s base grid (H, W, 3) of ``(x, y, 1)`` for a frame; cached, read-only.

    Built as ATen builds it (``linspace(-1, 1, n) * (n - 1) / n``, align_corners=False), so a grid computed
    from any box of it is bit-identical to the same pixels of the full frame's grid.
    """
    fh, fw = frame

    def lin(n: int) -> torch.Tensor:
        return torch.linspace(-1, 1, n) * (n - 1) / n if n > 1 else torch.zeros(1)

    base = torch.empty(fh, fw, 3)
    base[..., 0] = lin(fw)
    base[..., 1] = lin(fh)[:, None]
    base[..., 2] = 1.0
    return base


def _box_grid(theta: torch.Tensor, frame: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.affine_grid(theta, (1, C, *frame))`` restricted to the pixels of ``box``: (1, h, w, 2), the same numbers."""
    y0, x0, y1, x1 = box
    base = _frame_base_grid(frame)[y0:y1, x0:x1].reshape(1, -1, 3)
    return base.bmm(theta.transpose(1, 2)).view(1, y1 - y0, x1 - x0, 2)


def _warp_in_box(
    pixels: np.ndarray,
    mask: np.ndarray,
    theta: np.ndarray,
    box: tuple[int, int, int, int] | None,
    scratch: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """:func:`warp_segment` with the mask's ``box`` given and a zeroed (1, 4, H, W) float ``scratch`` frame.

    Also returns the output box (:func:`warp_box`), which holds the whole new mask.

    The segment is written into ``scratch`` inside its box (grid_sample normalises by the input's size, so the
    input stays frame-sized and the grid stays bit-identical to the full frame's), the output box is sampled,
    and ``scratch`` is zeroed again for the next segment.
    """
    frame = mask.shape
    out_pixels = np.zeros((*frame, 3), np.uint8)
    out_mask = np.zeros(frame, bool)
    if box is None:
        return out_pixels, out_mask, (0, 0, 0, 0)
    y0, x0, y1, x1 = box
    # apply_affine's input, pixels * mask and mask, written into the frame only inside the box.
    region = scratch[0, :, y0:y1, x0:x1]
    region[:3].copy_(_tensor(pixels[y0:y1, x0:x1]).permute(2, 0, 1))
    region[3].copy_(_tensor(mask[y0:y1, x0:x1]))
    region[:3].mul_(region[3])
    oy0, ox0, oy1, ox1 = warp_box(theta, box, frame)
    if oy1 > oy0 and ox1 > ox0:
        grid = _box_grid(torch.from_numpy(np.asarray(theta, np.float32).reshape(1, 2, 3)), frame, (oy0, ox0, oy1, ox1))
        both = F.grid_sample(scratch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        cover = both[3]
        keep = cover >= 0.5
        # apply_affine's where(keep, colours / cover, 0), rounded: the same numbers, in place; the copy into the
        # uint8 frame converts exactly, as the values are whole numbers in 0..255.
        colours = both[:3].div_(cover.clamp(min=1e-6)).round_().clamp_(0, 255).mul_(keep)
        torch.from_numpy(out_pixels[oy0:oy1, ox0:ox1]).copy_(colours.permute(1, 2, 0))
        out_mask[oy0:oy1, ox0:ox1] = keep.numpy()
    region.zero_()
    return out_pixels, out_mask, (oy0, ox0, oy1, ox1)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` end-exclusive box of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))  # only the rows that hold the mask
    return y0, int(cols[0]), y1, int(cols[-1]) + 1


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor view of a (possibly strided) array; read-only arrays are copied, as torch cannot mark views so."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (0 when both are empty)."""
    return float(iou64(np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b)))


def box_iou(a: np.ndarray, a_box: tuple[int, int, int, int], b: np.ndarray, b_box: tuple[int, int, int, int]) -> float:
    """:func:`mask_iou` of two bool masks whose pixels all lie inside the given boxes, counted in the boxes."""
    iy0, ix0 = max(a_box[0], b_box[0]), max(a_box[1], b_box[1])
    iy1, ix1 = min(a_box[2], b_box[2]), min(a_box[3], b_box[3])
    inter = np.count_nonzero(a[iy0:iy1, ix0:ix1] & b[iy0:iy1, ix0:ix1]) if iy1 > iy0 and ix1 > ix0 else 0
    area_a = np.count_nonzero(a[a_box[0] : a_box[2], a_box[1] : a_box[3]])
    area_b = np.count_nonzero(b[b_box[0] : b_box[2], b_box[1] : b_box[3]])
    return float(iou64(inter, area_a, area_b))


# ---------------------------------------------------------------- inputs


def window_inputs(
    labels: torch.Tensor,
    target: torch.Tensor,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    g_target: torch.Tensor,
    g_segment: torch.Tensor,
    config: TransformConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four network inputs, sampled from frames (of any size: the grids are in normalised coordinates).

    ``labels`` (B, H, W) and ``target`` (B, 1, H, W) are sampled on ``g_target``, the segment's ``pixels``
    (B, 3, H, W, in [0, 1], zero outside) and ``mask`` (B, 1, H, W) on ``g_segment``. At test time both are the
    window's ``G``; in training ``g_segment`` also carries the perturbation, so no perturbed frame is ever made.
    """
    size, ss = config.input_size, config.supersample
    layout = sample_layout(labels, g_target, size, config.num_classes)
    tgt = sample(target, g_target, size, ss)
    seg = sample(torch.cat([pixels, mask], 1), g_segment, size, ss)
    return layout, tgt, seg[:, :3], seg[:, 3:]


# ---------------------------------------------------------------- the aligner


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
    def predict_thetas(
        self,
        layout: np.ndarray,
        targets: Sequence[np.ndarray],
        pixels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        target_boxes: Sequence[tuple[int, int, int, int]],
        boxes: Sequence[tuple[int, int, int, int]],
    ) -> np.ndarray:
        """(B, 2, 3) frame-coordinate transforms for segments with non-empty masks and their boxes.

        The inputs :meth:`predict_theta` samples from full reduced frames, sampled from frames that hold only
        the box of each mask (all else is zero there anyway), pooled from box crops aligned to ``work_scale``:
        the same numbers. T then runs once per ``batch_size`` segments.
        """
        cfg = self.config
        frame = layout.shape
        k = cfg.work_scale
        g = window_theta(
            window_boxes(
                torch.tensor(np.asarray(target_boxes, np.float32).reshape(-1, 4)),
                torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
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
        grids = F.affine_grid(g, [len(boxes), 5, h * ss, w * ss], align_corners=False)
        windows = torch.empty(len(boxes), 5, h * ss, w * ss)
        for i in range(len(boxes)):
            tbox, (ty0, tx0, ty1, tx1) = _work_box(target_boxes[i], frame, k)
            sbox, (sy0, sx0, sy1, sx1) = _work_box(boxes[i], frame, k)
            reduced[0, :1, ty0:ty1, tx0:tx1] = avg_pool(_tensor(targets[i][tbox])[None].float(), k)
            # predict_theta's pixels / 255 * mask: with a 0/1 mask, (pixels * mask) / 255 is the same number.
            seg = torch.empty(4, *masks[i][sbox].shape)
            seg[:3].copy_(_tensor(pixels[i][sbox]).permute(2, 0, 1))
            seg[3].copy_(_tensor(masks[i][sbox]))
            seg[:3].mul_(seg[3]).div_(255.0)
            reduced[0, 1:, sy0:sy1, sx0:sx1] = avg_pool(seg, k)
            windows[i : i + 1] = F.grid_sample(
                reduced, grids[i : i + 1], mode="bilinear", padding_mode="zeros", align_corners=False
            )
            reduced[0, :1, ty0:ty1, tx0:tx1] = 0.0
            reduced[0, 1:, sy0:sy1, sx0:sx1] = 0.0
        windows = avg_pool(windows, ss)
        thetas = []
        for s in range(0, len(boxes), self.batch_size):
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
        target_boxes = [mask_box(targets[i]) for i in active]
        boxes = [mask_box(masks[i]) for i in active]
        thetas = self.predict_thetas(
            layout,
            [targets[i] for i in active],
            [pixels[i] for i in active],
            [masks[i] for i in active],
            target_boxes,
            boxes,
        )
        scratch = torch.zeros(1, 4, *layout.shape)
        for j, i in enumerate(active):
            self.calls += 1
            new_pixels, new_mask, new_box = _warp_in_box(pixels[i], masks[i], thetas[j], boxes[j], scratch)
            before = box_iou(masks[i], boxes[j], targets[i], target_boxes[j])
            after = box_iou(new_mask, new_box, targets[i], target_boxes[j])
            fell_back = self.fallback and after < before
            self.fallbacks += int(fell_back)
            self.last = batch[i] = Alignment(before, after, fell_back, tuple(float(v) for v in thetas[j].ravel()))
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
