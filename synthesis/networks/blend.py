"""The full-resolution canvas blend: real canvas pixels reach the output at their own resolution.

The synthesis network runs at its own, lower resolution (e.g. 192x256). With ``canvas_blend`` its
blend head predicts there, per pixel:

- a blend weight ``alpha`` in (0, 1): how much of the canvas to keep;
- a colour gain in [1/2, 2] and an offset in [-1/4, 1/4] per channel, averaged over
  ``COLOR_POOL`` x ``COLOR_POOL`` cells so the correction is smooth: it harmonises illumination
  and white balance and cannot paint texture.

All maps and the generated image are upsampled bilinearly to the canvas's resolution and::

    weight = alpha * feather(kept)
    image  = weight * clamp(gain * canvas + offset, 0, 1) + (1 - weight) * generated

``kept`` marks canvas pixels that are neither missing nor elided
(:func:`synthesis.canvas.elision.kept_pixels`). ``feather(kept)`` is ``kept`` times the share of
kept pixels in a ``(2 FEATHER + 1)``-square around each pixel: the weight falls off over a few
pixels inside the edge of a kept region and never reaches outside it, so seams blend and the
isolated pixels that elision keeps inside its bands (speckle) get little weight. The pipeline
feathers only canvases whose elision leaves speckle (:func:`feather_radius_for`); training
feathers with :data:`FEATHER` throughout.

A network without the head (trained before it) gives the upsampled generated image, so every
model answers at the canvas's resolution through the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

#: Raw channels of the blend head: alpha logit, gain (3), offset (3).
BLEND_CHANNELS = 7
#: Initial alpha logit: keep 98% of every kept canvas pixel before any training.
ALPHA_INIT_LOGIT = 4.0
MAX_LOG_GAIN = math.log(2.0)
MAX_OFFSET = 0.25
#: Side, in network pixels, of the cells the colour correction is averaged over.
COLOR_POOL = 8
#: Radius, in output pixels, of the feather inside the edges of kept regions.
FEATHER = 2


def blend_head(in_channels: int) -> nn.Conv2d:
    """The 1x1 head: zero weights, so it starts as 'keep the canvas (alpha 0.98), no colour change'."""
    head = nn.Conv2d(in_channels, BLEND_CHANNELS, 1)
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[0] = ALPHA_INIT_LOGIT
    return head


@dataclass(frozen=True)
class BlendMaps:
    """Blend maps at one resolution: ``alpha`` (B, 1, H, W) in (0, 1), ``gain`` and ``offset`` (B, 3, H, W)."""

    alpha: Tensor
    gain: Tensor
    offset: Tensor

    @classmethod
    def from_raw(cls, raw: Tensor) -> BlendMaps:
        """Squash the head's raw (B, 7, h, w) output into range; the colour maps are cell-averaged."""
        if raw.ndim != 4 or raw.shape[1] != BLEND_CHANNELS:
            raise ValueError(f"raw blend maps must be (B, {BLEND_CHANNELS}, H, W), got {tuple(raw.shape)}")
        raw = raw.float()
        colour = raw[:, 1:]
        h, w = colour.shape[-2:]
        if h >= COLOR_POOL and w >= COLOR_POOL:
            pooled = F.avg_pool2d(colour, COLOR_POOL, ceil_mode=True, count_include_pad=False)
            colour = upsample(pooled, (h, w))
        return cls(
            alpha=torch.sigmoid(raw[:, :1]),
            gain=torch.exp(MAX_LOG_GAIN * torch.tanh(colour[:, :3])),
            offset=MAX_OFFSET * torch.tanh(colour[:, 3:]),
        )

    def resized(self, size: tuple[int, int]) -> BlendMaps:
        return BlendMaps(upsample(self.alpha, size), upsample(self.gain, size), upsample(self.offset, size))


@dataclass(frozen=True)
class BlendedImage:
    """The output at the canvas's resolution and how it was made (all (B, C, H, W) float32).

    ``image`` and ``generated`` are RGB in [0, 1]; ``weight`` is the canvas's share of every output
    pixel (0 where the canvas was not kept); ``gain`` and ``offset`` the colour correction applied to it.
    """

    image: Tensor
    generated: Tensor
    weight: Tensor
    gain: Tensor
    offset: Tensor


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, C, h, w) to ``size`` (the one upsampling of network outputs)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def feather_radius_for(band: float, white_fraction: float) -> int:
    """The feather a canvas needs: :data:`FEATHER` when its elision leaves speckle (a band with
    some pixels kept inside it), else 0. Feathering exists to hide speckle; without speckle it only
    softens real pixels at region edges, which measurably costs detail and realism (docs/synthesis.md).
    """
    return FEATHER if band > 0 and 0 < white_fraction < 1 else 0


def feather(kept: Tensor, radius: int = FEATHER, pieces: Tensor | None = None) -> Tensor:
    """``kept`` (B, 1, H, W) in {0, 1} times the share of kept pixels around each pixel.

    With ``pieces`` (B, 1, H, W) integer ids of the segment behind each pixel, only neighbours of
    the same piece count, so the weight also falls off where two pasted segments meet (a seam).
    """
    if radius <= 0:
        return kept
    size = 2 * radius + 1
    if pieces is None:
        share = F.avg_pool2d(kept, size, stride=1, padding=radius, count_include_pad=False)
        return kept * share
    h, w = kept.shape[-2:]
    # Out-of-frame neighbours carry an id no piece has, and are left out of the count.
    ids = F.pad(pieces.long(), (radius,) * 4, value=-2)
    hits = F.pad(kept, (radius,) * 4)
    same = torch.zeros_like(kept)
    inside = torch.zeros_like(kept)
    for dy in range(size):
        for dx in range(size):
            window = ids[:, :, dy : dy + h, dx : dx + w]
            same += hits[:, :, dy : dy + h, dx : dx + w] * (window == pieces).to(kept.dtype)
            inside += (window != -2).to(kept.dtype)
    return kept * same / inside


def blend_canvas(
    generated: Tensor,
    raw_maps: Tensor | None,
    canvas: Tensor,
    kept: Tensor,
    pieces: Tensor | None = None,
    feather_radius: int = FEATHER,
) -> BlendedImage:
    """Blend the full-resolution ``canvas`` into the network's ``generated`` image.

    Args:
        generated: (B, 3, h, w) network RGB in [0, 1], at the network's resolution.
        raw_maps: (B, 7, h, w) raw blend head output, or None for a network without the head.
        canvas: (B, 3, H, W) canvas RGB in [0, 1] at the output resolution.
        kept: (B, 1, H, W) 1 where the canvas pixel is real (neither missing nor elided).
        pieces: optional (B, 1, H, W) integer segment id behind each pixel: seams between
            pieces are feathered too (see :func:`feather`).
        feather_radius: of :func:`feather`, in output pixels (0: no feathering).
    """
    b, _, h, w = canvas.shape
    if kept.shape != (b, 1, h, w) or generated.shape[:2] != (b, 3):
        raise ValueError(
            f"canvas {tuple(canvas.shape)}, kept {tuple(kept.shape)} and generated {tuple(generated.shape)} "
            "must be (B, 3, H, W), (B, 1, H, W) and (B, 3, h, w)"
        )
    size = (h, w)
    up = upsample(generated.float(), size)
    if raw_maps is None:
        ones = torch.ones_like(up)
        return BlendedImage(up, up, torch.zeros_like(kept, dtype=up.dtype), ones, torch.zeros_like(up))
    maps = BlendMaps.from_raw(raw_maps).resized(size)
    weight = maps.alpha * feather(kept.to(up.dtype), feather_radius, pieces)
    corrected = (maps.gain * canvas.to(up.dtype) + maps.offset).clamp(0.0, 1.0)
    image = weight * corrected + (1.0 - weight) * up
    return BlendedImage(image, up, weight, maps.gain, maps.offset)
