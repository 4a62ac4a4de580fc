"""The convolution block of the small canvas networks (T and ordering)."""

from __future__ import annotations

from torch import nn


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Conv 3x3 (optionally strided) -> GroupNorm -> LeakyReLU(0.2)."""
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.2, inplace=True),
    )
