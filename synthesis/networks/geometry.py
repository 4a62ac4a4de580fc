"""Affine geometry of windows and segments: the sampling and warping shared by T and the ordering network.

Conventions (one for the whole module): a transform ``theta`` is a (2, 3) matrix in torch's normalised
coordinates with ``align_corners=False`` (``-1`` and ``1`` are the outer edges of the frame), mapping
*output* points to the *input* points they sample, as :func:`torch.nn.functional.affine_grid` does. A
network predicts ``theta`` in window coordinates (:func:`window_boxes`, :func:`window_theta`);
:func:`window_to_frame` turns it into frame coordinates, where :func:`apply_affine` warps the
full-resolution segment (:func:`warp_segment` for one numpy segment, on its box only).
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)

from memory_bank.classes import IGNORE
from retrieval_service.iou import iou64
from synthesis.tensors import one_hot


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
    """What :func:`window_boxes` reads of a network's config (``TransformConfig``, ``OrderingConfig``)."""

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
    out_pixels, out_mask, _ = warp_in_box(pixels, mask, np.asarray(theta, np.float32).reshape(2, 3), box, scratch)
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


def warp_in_box(
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
    region[:3].copy_(tensor_view(pixels[y0:y1, x0:x1]).permute(2, 0, 1))
    region[3].copy_(tensor_view(mask[y0:y1, x0:x1]))
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


def tensor_view(a: np.ndarray) -> torch.Tensor:
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
