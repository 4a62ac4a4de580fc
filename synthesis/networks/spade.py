"""A SPADE-class parametric generator (Park et al., CVPR 2019): the peer SIMS is measured against.

It follows the reference architecture of NVlabs/SPADE's ``SPADEGenerator`` (no VAE encoder):

- the layout, one-hot and nearest-resized, is the only input; a 3x3 convolution of it at the
  coarsest size (``resolution / 2**upsamplings``) starts the decoder;
- ``SPADEResBlock`` s, each ``SPADE -> LReLU(0.2) -> conv3x3`` twice plus a shortcut (learned,
  ``SPADE -> conv1x1``, when the width changes), with spectral norm on every convolution;
- **SPADE** normalisation: a parameter-free instance norm, then a per-pixel scale ``1 + gamma``
  and shift ``beta`` predicted from the layout resized to the block's size by a small shared
  convolution (``hidden`` channels, ReLU) and two 3x3 convolutions;
- the blocks of SPADE's "normal" layout: ``head`` at 16 ``base_width``, upsampling, two
  ``middle`` blocks, then one block per upsampling halving the width down to ``base_width``;
- ``LReLU -> conv3x3 -> 3`` and ``tanh``, mapped to [0, 1].

The reference uses synchronised batch norm inside SPADE; on CPU with batches of 2 instance norm
(the reference's ``spadeinstance3x3`` option) is used. Widths are config data
(:class:`SpadeConfig`); the shipped peer is narrow enough to train on a 2-core CPU.

The generator ignores any canvas: :meth:`SpadeGenerator.forward_with_blend` has the synthesis
network's signature, so the pipeline, training and evaluation run it like any other synthesis
network (its model card marks it ``parametric``, so it is fed an empty canvas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from memory_bank.classes import IGNORE
from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.tensors import one_hot


@dataclass(frozen=True)
class SpadeConfig(NetworkConfig):
    """Constructor arguments of :class:`SpadeGenerator`.

    Attributes:
        num_classes: layout classes; ids ``>= num_classes`` (255) are unlabelled (all-zero one-hot).
        resolution: (rows, cols) it is trained at; divisible by ``2**upsamplings``.
        base_width: channels of the last block (the reference's ``ngf``); the head has 16x.
        max_width: cap on any block's width (the reference has none; it keeps a CPU peer small).
        hidden: channels of SPADE's shared layout convolution (the reference's 128).
        upsamplings: doublings from the coarsest size to ``resolution`` (the reference's 5).
        spectral: spectral norm on the convolutions, as in the reference.
    """

    num_classes: int
    resolution: tuple[int, int]
    base_width: int = 16
    max_width: int = 256
    hidden: int = 32
    upsamplings: int = 5
    spectral: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        if not 0 < self.num_classes < IGNORE:
            raise ValueError(f"num_classes must be in 1..{IGNORE - 1}, got {self.num_classes}")
        if min(self.base_width, self.max_width, self.hidden) < 1 or not 1 <= self.upsamplings <= 7:
            raise ValueError("base_width, max_width and hidden must be >= 1 and upsamplings in 1..7")
        factor = 2**self.upsamplings
        if len(self.resolution) != 2 or any(v % factor or v < factor for v in self.resolution):
            raise ValueError(f"resolution {self.resolution} must be two sizes divisible by 2**upsamplings = {factor}")

    def width(self, level: int) -> int:
        """Channels of a block ``level`` doublings above ``base_width`` (capped by ``max_width``)."""
        return min(self.base_width * 2**level, self.max_width)


def _conv(in_ch: int, out_ch: int, kernel: int, spectral: bool, bias: bool = True) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    return spectral_norm(conv) if spectral else conv


class Spade(nn.Module):
    """Instance norm, then a per-pixel scale and shift predicted from the layout."""

    def __init__(self, channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, layout: Tensor) -> Tensor:
        layout = F.interpolate(layout, size=x.shape[-2:], mode="nearest")
        features = self.shared(layout)
        return self.norm(x) * (1 + self.gamma(features)) + self.beta(features)


class SpadeResBlock(nn.Module):
    """``SPADE -> LReLU -> conv`` twice, with a (learned when widths differ) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, label_channels: int, hidden: int, spectral: bool) -> None:
        super().__init__()
        middle = min(in_ch, out_ch)
        self.norm_0 = Spade(in_ch, label_channels, hidden)
        self.conv_0 = _conv(in_ch, middle, 3, spectral)
        self.norm_1 = Spade(middle, label_channels, hidden)
        self.conv_1 = _conv(middle, out_ch, 3, spectral)
        self.shortcut: nn.Module | None = None
        self.norm_s: Spade | None = None
        if in_ch != out_ch:
            self.norm_s = Spade(in_ch, label_channels, hidden)
            self.shortcut = _conv(in_ch, out_ch, 1, spectral, bias=False)

    def forward(self, x: Tensor, layout: Tensor) -> Tensor:
        skip = x if self.shortcut is None or self.norm_s is None else self.shortcut(self.norm_s(x, layout))
        h = self.conv_0(F.leaky_relu(self.norm_0(x, layout), 0.2))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, layout), 0.2))
        return skip + h


class SpadeGenerator(PretrainedNetwork, config_class=SpadeConfig, kind="synthesis network"):
    """Layout -> photograph, the SPADE way. See the module docstring for the architecture."""

    def __init__(
        self,
        num_classes: int,
        resolution: Sequence[int],
        base_width: int = 16,
        max_width: int = 256,
        hidden: int = 32,
        upsamplings: int = 5,
        spectral: bool = True,
    ) -> None:
        super().__init__()
        self.config = SpadeConfig(
            num_classes=num_classes,
            resolution=tuple(resolution),  # type: ignore[arg-type]
            base_width=base_width,
            max_width=max_width,
            hidden=hidden,
            upsamplings=upsamplings,
            spectral=spectral,
        )
        cfg = self.config
        top = cfg.width(4)  # the reference's 16 * ngf
        self.head_conv = nn.Conv2d(cfg.num_classes, top, 3, padding=1)
        self.head = SpadeResBlock(top, top, cfg.num_classes, cfg.hidden, cfg.spectral)
        self.middle = nn.ModuleList(
            SpadeResBlock(top, top, cfg.num_classes, cfg.hidden, cfg.spectral) for _ in range(2)
        )
        # One block per remaining doubling, widths 16, 8, 4, 2, 1 x base (the reference's up_0..up_3).
        levels = [min(4, cfg.upsamplings - 2 - i) for i in range(cfg.upsamplings - 1)]
        widths = [top] + [cfg.width(max(level, 0)) for level in levels]
        self.up = nn.ModuleList(
            SpadeResBlock(widths[i], widths[i + 1], cfg.num_classes, cfg.hidden, cfg.spectral)
            for i in range(len(levels))
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)
        #: The synthesis network's blend head; a parametric peer has none.
        self.to_blend = None

    def _layout(self, layout: Tensor, dtype: torch.dtype) -> Tensor:
        cfg = self.config
        if layout.dtype.is_floating_point:
            if layout.ndim != 4 or layout.shape[1] != cfg.num_classes:
                raise ValueError(f"a float layout must be (B, {cfg.num_classes}, H, W), got {tuple(layout.shape)}")
            hot = layout.to(dtype)
        elif layout.ndim == 3:
            hot = one_hot(layout, cfg.num_classes, dtype=dtype)
        else:
            raise ValueError(f"layout must be (B, H, W) integer class ids, got {tuple(layout.shape)} {layout.dtype}")
        factor = 2**cfg.upsamplings
        if hot.shape[-2] % factor or hot.shape[-1] % factor:
            raise ValueError(f"layout size {tuple(hot.shape[-2:])} must be divisible by {factor}")
        return hot

    def forward(self, layout: Tensor, canvas: Tensor | None = None, missing: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] from a layout alone (``canvas`` and ``missing`` are ignored)."""
        hot = self._layout(layout, self.head_conv.weight.dtype)
        h, w = hot.shape[-2:]
        factor = 2**self.config.upsamplings
        x = self.head_conv(F.interpolate(hot, size=(h // factor, w // factor), mode="nearest"))
        x = self.head(x, hot)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for block in self.middle:
            x = block(x, hot)
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, hot)
        return (torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2))) + 1.0) / 2.0

    def forward_with_blend(self, layout: Tensor, canvas: Tensor, missing: Tensor) -> tuple[Tensor, None]:
        """The synthesis network's interface: (RGB, no blend maps)."""
        return self.forward(layout), None
