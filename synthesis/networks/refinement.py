"""The SIMS synthesis network (paper §5): a VGG-like encoder and a cascaded refinement decoder.

Input: the one-hot layout (unlabelled pixels are all zeros), the canvas (RGB in [0, 1]) and the
missing-pixel mask (1 where the canvas has no pixel). Output: an RGB photograph in [0, 1].

- Encoder: one module per scale, finest first. Each is ``n`` times conv3x3 -> layer norm ->
  LReLU(0.2) (2 convolutions in the first two modules, 3 after, as in VGG), and average pooling
  takes its output to the next scale.
- Decoder (CRN): one module per scale, coarsest first. Each takes the encoder features at its scale,
  the bilinearly upsampled output of the previous module, and the layout and canvas (with the mask)
  resized to its scale by area averaging; it applies conv3x3 -> layer norm -> LReLU(0.2) twice.
- Output: a 1x1 convolution to RGB and a sigmoid, so the image is in [0, 1] by construction.
- With ``canvas_blend``, a second 1x1 head beside the RGB one predicts the raw maps of the
  full-resolution canvas blend (a blend weight, a colour gain and an offset; see
  :mod:`synthesis.networks.blend`), from the same last decoder features.

Layer norm is ``GroupNorm(1, C)``: normalisation over (C, H, W) per sample with a per-channel
affine, which is what the CRN code's ``slim.layer_norm`` computes on NHWC tensors.

Width and depth come from :class:`RefinementConfig` (saved as ``config.json`` next to the weights),
never from code edits; the network is fully convolutional, and ``resolution`` records the size it
is trained and shipped at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from memory_bank.classes import IGNORE
from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.tensors import one_hot


@dataclass(frozen=True)
class RefinementConfig(NetworkConfig):
    """Constructor arguments of :class:`CascadedRefinementNetwork`.

    Attributes:
        num_classes: classes of the layout (one-hot channels); ids ``>= num_classes`` (255) are unlabelled.
        resolution: (rows, cols) the network is trained and shipped at; divisible by ``2**(scales - 1)``.
        encoder_widths: channels of each encoder module, finest scale first; its length is the number of scales.
        decoder_widths: channels of each decoder module, finest scale first (same length).
        encoder_convs: convolutions per encoder module (default: 2, 2, then 3 for each deeper module).
        decoder_convs: convolutions per decoder module.
        negative_slope: of the leaky ReLUs.
        canvas_channels: colour channels of the canvas (the missing mask adds one more).
        canvas_blend: also predict the blend maps that keep the full-resolution canvas
            (:mod:`synthesis.networks.blend`); off for the networks trained before it.
        hole_refiner_widths: widths of the full-resolution :class:`~synthesis.networks.blend.HoleRefiner`
            that draws where the canvas is not kept (empty: none, as in the networks trained before it).
    """

    num_classes: int
    resolution: tuple[int, int]
    encoder_widths: tuple[int, ...]
    decoder_widths: tuple[int, ...]
    encoder_convs: tuple[int, ...] = field(default=())
    decoder_convs: int = 2
    negative_slope: float = 0.2
    canvas_channels: int = 3
    canvas_blend: bool = False
    hole_refiner_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hole_refiner_widths", tuple(int(v) for v in self.hole_refiner_widths))
        if self.hole_refiner_widths and len(self.hole_refiner_widths) != 2:
            raise ValueError(f"hole_refiner_widths must be empty or two widths, got {self.hole_refiner_widths}")
        # Normalise JSON lists to tuples so configs compare and hash by value.
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "encoder_widths", tuple(int(v) for v in self.encoder_widths))
        object.__setattr__(self, "decoder_widths", tuple(int(v) for v in self.decoder_widths))
        scales = len(self.encoder_widths)
        convs = tuple(int(v) for v in self.encoder_convs) or tuple(2 if i < 2 else 3 for i in range(scales))
        object.__setattr__(self, "encoder_convs", convs)
        if not 0 < self.num_classes < IGNORE:
            raise ValueError(f"num_classes must be in 1..{IGNORE - 1}, got {self.num_classes}")
        if scales == 0 or len(self.decoder_widths) != scales or len(convs) != scales:
            raise ValueError(
                f"encoder_widths ({scales}), decoder_widths ({len(self.decoder_widths)}) and encoder_convs "
                f"({len(convs)}) must have the same, non-zero length (one entry per scale)"
            )
        if min((*self.encoder_widths, *self.decoder_widths, *convs, self.decoder_convs)) < 1:
            raise ValueError("widths and convolution counts must be positive")
        if len(self.resolution) != 2 or any(v % self.factor or v < self.factor for v in self.resolution):
            raise ValueError(
                f"resolution {self.resolution} must be two sizes divisible by 2**(scales-1) = {self.factor}"
            )

    @property
    def scales(self) -> int:
        return len(self.encoder_widths)

    @property
    def factor(self) -> int:
        """Downsampling from the finest to the coarsest scale; input sizes must be multiples of it."""
        return 2 ** (len(self.encoder_widths) - 1)

    @property
    def in_channels(self) -> int:
        """Input channels: one-hot layout, canvas, missing mask."""
        return self.num_classes + self.canvas_channels + 1


def area_pyramid(x: Tensor, scales: int) -> list[Tensor]:
    """``x`` at ``scales`` scales, finest first, each area-averaged to half the size of the one before.

    The guides of a cascaded refinement network: every module sees the input at its own scale.
    """
    pyramid = [x]
    for _ in range(1, scales):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid


class ConvBlock(nn.Sequential):
    """``n`` times conv3x3 -> layer norm -> leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, n: int, negative_slope: float) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                nn.GroupNorm(1, out_channels),
                nn.LeakyReLU(negative_slope),
            ]
        super().__init__(*layers)


class CascadedRefinementNetwork(PretrainedNetwork, config_class=RefinementConfig, kind="synthesis network"):
    """(layout, canvas, missing) -> photograph. See the module docstring for the architecture.

    Build it from explicit arguments (``CascadedRefinementNetwork(num_classes=11, resolution=(96, 128),
    encoder_widths=(...), decoder_widths=(...))``) or from a config with :meth:`from_config`.
    """

    def __init__(
        self,
        num_classes: int,
        resolution: Sequence[int],
        encoder_widths: Sequence[int],
        decoder_widths: Sequence[int],
        encoder_convs: Sequence[int] = (),
        decoder_convs: int = 2,
        negative_slope: float = 0.2,
        canvas_channels: int = 3,
        canvas_blend: bool = False,
        hole_refiner_widths: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.config = RefinementConfig(
            num_classes=num_classes,
            resolution=tuple(resolution),  # type: ignore[arg-type]
            encoder_widths=tuple(encoder_widths),
            decoder_widths=tuple(decoder_widths),
            encoder_convs=tuple(encoder_convs),
            decoder_convs=decoder_convs,
            negative_slope=negative_slope,
            canvas_channels=canvas_channels,
            canvas_blend=canvas_blend,
            hole_refiner_widths=tuple(hole_refiner_widths),
        )
        cfg = self.config
        guide = cfg.in_channels  # layout + canvas + mask, resized to each scale
        self.encoder = nn.ModuleList()
        in_ch = guide
        for width, n in zip(cfg.encoder_widths, cfg.encoder_convs, strict=True):
            self.encoder.append(ConvBlock(in_ch, width, n, cfg.negative_slope))
            in_ch = width
        # decoder[s] works at scale s (0 = full resolution); the coarsest has no previous output.
        self.decoder = nn.ModuleList()
        for s in range(cfg.scales):
            prev = cfg.decoder_widths[s + 1] if s + 1 < cfg.scales else 0
            in_ch = cfg.encoder_widths[s] + prev + guide
            self.decoder.append(ConvBlock(in_ch, cfg.decoder_widths[s], cfg.decoder_convs, cfg.negative_slope))
        self.to_rgb = nn.Conv2d(cfg.decoder_widths[0], 3, 1)
        self.to_blend: nn.Conv2d | None = None
        if cfg.canvas_blend:
            from synthesis.networks.blend import blend_head

            self.to_blend = blend_head(cfg.decoder_widths[0])
        self.hole_refiner: nn.Module | None = None
        if cfg.hole_refiner_widths:
            from synthesis.networks.blend import HoleRefiner

            self.hole_refiner = HoleRefiner(cfg.num_classes, cfg.hole_refiner_widths, cfg.negative_slope)

    def prepare_input(self, layout: Tensor, canvas: Tensor, missing: Tensor) -> Tensor:
        """Check shapes and stack one-hot layout, canvas and mask into (B, C + 4, H, W).

        ``layout`` is (B, H, W) class ids, or an already one-hot/soft (B, num_classes, H, W) float map.
        """
        cfg = self.config
        if layout.dtype.is_floating_point:
            if layout.ndim != 4 or layout.shape[1] != cfg.num_classes:
                raise ValueError(f"a float layout must be (B, {cfg.num_classes}, H, W), got {tuple(layout.shape)}")
            hot = layout.to(canvas.dtype)
        elif layout.ndim == 3:
            hot = one_hot(layout, cfg.num_classes, dtype=canvas.dtype)
        else:
            raise ValueError(f"layout must be (B, H, W) integer class ids, got {tuple(layout.shape)} {layout.dtype}")
        b, _, h, w = hot.shape
        if canvas.shape != (b, cfg.canvas_channels, h, w) or missing.shape != (b, 1, h, w):
            raise ValueError(
                f"canvas {tuple(canvas.shape)} and missing {tuple(missing.shape)} must be "
                f"({b}, {cfg.canvas_channels}, {h}, {w}) and ({b}, 1, {h}, {w}) to match the layout"
            )
        if h % cfg.factor or w % cfg.factor:
            raise ValueError(f"input size {h}x{w} must be divisible by {cfg.factor} for {cfg.scales} scales")
        return torch.cat([hot, canvas, missing], dim=1)

    def forward(self, layout: Tensor, canvas: Tensor, missing: Tensor) -> Tensor:
        """Synthesize (B, 3, H, W) RGB in [0, 1] from a layout, a canvas and its missing-pixel mask."""
        return torch.sigmoid(self.to_rgb(self.decode(layout, canvas, missing)))

    def forward_with_blend(self, layout: Tensor, canvas: Tensor, missing: Tensor) -> tuple[Tensor, Tensor | None]:
        """(RGB in [0, 1], raw blend maps (B, 7, H, W) or None without ``canvas_blend``) at the input size."""
        features = self.decode(layout, canvas, missing)
        rgb = torch.sigmoid(self.to_rgb(features))
        return rgb, None if self.to_blend is None else self.to_blend(features)

    def decode(self, layout: Tensor, canvas: Tensor, missing: Tensor) -> Tensor:
        """The last decoder module's features (B, decoder_widths[0], H, W), which the output heads read."""
        x = self.prepare_input(layout, canvas, missing)
        # 1. Guides: the input resized to every scale by area averaging (finest first).
        guides = area_pyramid(x, self.config.scales)
        # 2. Encoder: VGG-like modules with average pooling between scales.
        features = []
        h = x
        for s, module in enumerate(self.encoder):
            if s > 0:
                h = F.avg_pool2d(h, 2)
            h = module(h)
            features.append(h)
        # 3. Cascaded refinement, coarsest scale first.
        coarsest = self.config.scales - 1
        out = self.decoder[coarsest](torch.cat([features[coarsest], guides[coarsest]], dim=1))
        for s in reversed(range(coarsest)):
            up = F.interpolate(out, size=guides[s].shape[-2:], mode="bilinear", align_corners=False)
            out = self.decoder[s](torch.cat([features[s], up, guides[s]], dim=1))
        return out
