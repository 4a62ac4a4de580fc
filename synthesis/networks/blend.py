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

**Holes at full resolution.** Where the canvas is not kept, the blended image is the upsampled
network output, soft beside the real pixels. A :class:`HoleRefiner` (``hole_refiner_widths`` in
the network's config) draws there at the output resolution: three dilated 3x3 convolutions read
the blended image, the canvas's weight and the full-resolution one-hot layout, and add a residual
scaled by ``1 - weight``, so kept canvas pixels stay as they are. Its last convolution starts at
zero: a network that gains it starts where it was. :func:`render_full_resolution` is the one
function that training and the pipeline call to make the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

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


class HoleRefiner(nn.Module):
    """Full-resolution residual where the canvas is not kept (see the module docstring).

    Input: the blended image (3), the canvas weight (1) and the one-hot layout (``num_classes``),
    all at the output resolution. Dilations 1, 2, 4 see 15x15 pixels at about the cost of 3x3.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (24, 24), negative_slope: float = 0.2) -> None:
        super().__init__()
        if len(widths) != 2 or min(widths) < 1:
            raise ValueError(f"hole refiner widths must be two positive ints, got {tuple(widths)}")
        self.num_classes = num_classes
        a, b = int(widths[0]), int(widths[1])
        self.body = nn.Sequential(
            nn.Conv2d(3 + 1 + num_classes, a, 3, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(a, b, 3, padding=2, dilation=2),
            nn.LeakyReLU(negative_slope),
        )
        self.out = nn.Conv2d(b, 3, 3, padding=4, dilation=4)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: Tensor, weight: Tensor, layout_hot: Tensor) -> Tensor:
        """``image`` (B, 3, H, W) redrawn where ``weight`` (B, 1, H, W) is low; ``layout_hot`` is (B, C, H, W)."""
        x = torch.cat([image, weight, layout_hot.to(image.dtype)], dim=1)
        residual = self.out(self.body(x))
        return (image + (1.0 - weight) * residual).clamp(0.0, 1.0)


def refine_holes(network: Any, image: Tensor, weight: Tensor, layout_hot: Tensor | None) -> Tensor:
    """``network.hole_refiner`` applied to a blended image (unchanged without one or without a layout)."""
    refiner = getattr(network, "hole_refiner", None)
    if refiner is None or layout_hot is None:
        return image
    return refiner(image, weight, layout_hot)


def render_full_resolution(
    network: Any,
    generated: Tensor,
    raw_maps: Tensor | None,
    canvas: Tensor,
    kept: Tensor,
    layout_hot: Tensor | None = None,
    pieces: Tensor | None = None,
    feather_radius: int = FEATHER,
) -> BlendedImage:
    """The output at the canvas's resolution: :func:`blend_canvas`, then the network's hole refiner.

    ``layout_hot`` is the (B, C, H, W) one-hot layout at the output resolution (the refiner's input).
    """
    blended = blend_canvas(generated, raw_maps, canvas, kept, pieces, feather_radius)
    refined = refine_holes(network, blended.image, blended.weight, layout_hot)
    return blended if refined is blended.image else replace(blended, image=refined)
