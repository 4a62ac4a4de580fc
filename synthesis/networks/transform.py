"""Transformation network T (paper §4.3): a spatial transformer that aligns a retrieved segment to its target.

T looks at a window around the target component and the retrieved segment (the union of their boxes,
enlarged, at the aspect of the network input) and predicts a 2D affine transform, as a spatial
transformer does: its last layer starts at zero with an identity bias, so an untrained T is the identity.

T's parts, one module each: the geometry of windows, sampling and warps, with its conventions for
``theta`` (:mod:`synthesis.networks.geometry`, shared with the ordering network); the network and its
inputs (this module); the aligner that runs it in the canvas builder
(:mod:`synthesis.networks.transform_aligner`). This module also offers the aligner's names, so
``from synthesis.networks.transform import TransformAligner`` keeps working; geometry's names are
imported from :mod:`synthesis.networks.geometry`, where they are defined.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.networks.conv_block import conv_block
from synthesis.networks.geometry import sample, sample_layout


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


#: What :mod:`synthesis.networks.transform_aligner` defines, offered here too (see :func:`__getattr__`).
_ALIGNER_NAMES = frozenset({"Alignment", "TransformAligner"})


def __getattr__(name: str) -> Any:
    """The aligner's names, read from its module on first use: it builds on the network above, so importing
    it here eagerly would make the two modules import each other."""
    if name in _ALIGNER_NAMES:
        from synthesis.networks import transform_aligner

        return getattr(transform_aligner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Alignment",  # noqa: F822 (served by __getattr__)
    "TransformAligner",  # noqa: F822 (served by __getattr__)
    "TransformConfig",
    "TransformNet",
    "window_inputs",
]
