"""Adversarial losses as small modules (pix2pixHD's multi-scale PatchGAN, LSGAN and feature matching).

- :class:`PatchDiscriminator`: strided 4x4 convolutions with instance norm and LReLU(0.2), ending
  in a 1-channel map of real/fake scores, one per receptive-field patch. It returns every
  intermediate activation, for feature matching.
- :class:`MultiscaleDiscriminator`: ``scales`` such networks, each on the input average-pooled
  once more than the previous one, so coarse structure and fine texture are judged separately.
- :func:`lsgan_loss`: least squares (real -> 1, fake -> 0), which trains more stably than BCE.
- :func:`feature_matching_loss`: L1 between the discriminator's activations on the fake and on
  the real image, averaged over layers and scales (the generator's extra signal).

The discriminator is conditioned on the layout: its input is the image concatenated with the
one-hot layout. :class:`AdversarialConfig` switches it on in a synthesis training config; the
generator's code does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


@dataclass(frozen=True)
class AdversarialConfig:
    """The ``adversarial`` section of a synthesis training config (absent = no discriminator).

    Attributes:
        weight: of the generator's LSGAN term.
        feature_matching: weight of the feature matching term.
        scales, width, layers: of the multi-scale discriminator.
        lr: the discriminator's Adam learning rate (betas 0.5, 0.999 as in pix2pixHD).
    """

    weight: float = 1.0
    feature_matching: float = 10.0
    scales: int = 2
    width: int = 32
    layers: int = 3
    lr: float = 2e-4

    def __post_init__(self) -> None:
        if min(self.weight, self.feature_matching) < 0 or min(self.scales, self.width, self.layers) < 1 or self.lr <= 0:
            raise ValueError(f"bad adversarial settings: {self}")


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) -> the list of its activations; the last is the (B, 1, h, w) patch score map."""

    def __init__(self, in_channels: int, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2))]
        ch = width
        for i in range(1, layers + 1):
            out = min(width * 2**i, 8 * width)
            stride = 2 if i < layers else 1
            blocks.append(
                nn.Sequential(nn.Conv2d(ch, out, 4, stride, 1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2))
            )
            ch = out
        blocks.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``scales`` patch discriminators on the input at 1, 1/2, 1/4, ... of its size."""

    def __init__(self, in_channels: int, scales: int = 2, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.nets = nn.ModuleList(PatchDiscriminator(in_channels, width, layers) for _ in range(scales))

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


def lsgan_loss(outputs: Sequence[Sequence[Tensor]], real: bool) -> Tensor:
    """Least-squares GAN loss over every scale's score map (the last activation of each)."""
    target = 1.0 if real else 0.0
    return torch.stack([(feats[-1].float() - target).pow(2).mean() for feats in outputs]).mean()


def feature_matching_loss(fake: Sequence[Sequence[Tensor]], real: Sequence[Sequence[Tensor]]) -> Tensor:
    """Mean L1 between fake and (detached) real activations, over all layers but the score maps."""
    terms = [
        (f.float() - r.detach().float()).abs().mean()
        for fake_feats, real_feats in zip(fake, real, strict=True)
        for f, r in zip(fake_feats[:-1], real_feats[:-1], strict=True)
    ]
    return torch.stack(terms).mean()
