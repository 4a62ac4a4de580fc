"""Layout refinement: a cascaded refinement network that turns a coarse layout into a dense one.

Input: a coarse label map (class ids, 255 = unlabelled) encoded as ``num_classes + 1`` channels,
one per class plus one for unlabelled pixels, and area-resized to the network's resolution (so a
pixel of the network's frame holds the class shares of the pixels it covers; thin structures are
not lost as they would be by nearest sampling). Output: ``num_classes`` logits per pixel. There is
no unlabelled output class: training ignores the unlabelled pixels of the *fine* target.

Architecture (Chen and Koltun's CRN, without the photo decoder): one module per scale, coarsest
first. The coarsest module sees the input area-pooled to ``resolution / 2**(scales-1)`` (3x4 for
96x128 and 6 scales), so every output pixel depends on the whole layout; each finer module takes
the input at its scale and the bilinearly upsampled output of the previous one, and applies
``convs`` times conv3x3 -> layer norm -> LReLU. The modules are :class:`ConvBlock` from the
synthesis network (:mod:`synthesis.networks.refinement`), the same block the paper's CRN uses.
A 1x1 convolution maps the finest features to class logits.

:func:`refine_layout` runs it on a uint8 map of any size: logits are bilinearly resized back to the
input size (smoother outlines than nearest upsampling of labels), and labelled coarse pixels keep
their label unless the network gives it less than ``keep_threshold`` probability (see there).

Checkpoints are model directories (:mod:`synthesis.model_directory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import Tensor, nn

from memory_bank.classes import IGNORE
from memory_bank.errors import LayoutError
from memory_bank.segments import check_label_map
from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.networks.refinement import ConvBlock, area_pyramid
from synthesis.tensors import one_hot

#: Default of :func:`refine_layout`'s ``keep_threshold``: a labelled coarse pixel keeps its label
#: unless the network gives that label less than this probability. 0 keeps every labelled pixel (the
#: network fills the gaps only): on coarsened *train* layouts (``benchmarks/layout_refiner.py --tune``, not
#: val) it scored best, by a hair, of 0 .. 0.5 and network-only, and it respects what a user drew.
DEFAULT_KEEP_THRESHOLD = 0.0


@dataclass(frozen=True)
class LayoutRefinerConfig(NetworkConfig):
    """Constructor arguments of :class:`LayoutRefiner`, saved as ``config.json``.

    Attributes:
        num_classes: output classes; the input has one more channel, for unlabelled pixels.
        resolution: (rows, cols) the network works at; divisible by ``2**(scales - 1)``.
        widths: channels of each module, finest scale first; its length is the number of scales.
        convs: convolutions per module.
        negative_slope: of the leaky ReLUs.
    """

    num_classes: int = 11
    resolution: tuple[int, int] = (96, 128)
    widths: tuple[int, ...] = (32, 48, 64, 64, 96, 96)
    convs: int = 2
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "widths", tuple(int(v) for v in self.widths))
        if not 0 < self.num_classes < IGNORE:
            raise ValueError(f"num_classes must be in 1..{IGNORE - 1}, got {self.num_classes}")
        if not self.widths or min(self.widths) < 1 or self.convs < 1:
            raise ValueError("widths must be a non-empty list of positive channel counts, convs positive")
        if len(self.resolution) != 2 or any(v < self.factor or v % self.factor for v in self.resolution):
            raise ValueError(f"resolution {self.resolution} must be two multiples of 2**(scales-1) = {self.factor}")

    @property
    def scales(self) -> int:
        return len(self.widths)

    @property
    def factor(self) -> int:
        """Downsampling from the finest to the coarsest scale."""
        return 2 ** (len(self.widths) - 1)

    @property
    def in_channels(self) -> int:
        """One channel per class plus one for unlabelled pixels."""
        return self.num_classes + 1


def class_shares(labels: Tensor, num_classes: int, size: Sequence[int] | None = None) -> Tensor:
    """(B, H, W) class ids -> (B, num_classes + 1, h, w) class shares; the last channel is unlabelled.

    The one-hot of :func:`synthesis.tensors.one_hot` with its unlabelled channel (ids outside
    ``0..num_classes-1``, such as 255, count as unlabelled). With ``size`` it is area-resized to
    (h, w), so each output pixel holds the shares of the input pixels it covers.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W) integer class ids, got {tuple(labels.shape)} {labels.dtype}")
    hot = one_hot(labels, num_classes, unlabelled_channel=True)
    if size is not None and tuple(size) != tuple(hot.shape[-2:]):
        hot = F.interpolate(hot, size=tuple(int(v) for v in size), mode="area")
    return hot


class LayoutRefiner(PretrainedNetwork, config_class=LayoutRefinerConfig, kind="layout refiner"):
    """Coarse layout (encoded by :func:`class_shares`) -> dense class logits. See the module docstring.

    Build it from explicit arguments (``LayoutRefiner(num_classes=11, resolution=(96, 128),
    widths=(32, 48, 64, 64, 96, 96))``) or from a config with :meth:`from_config`.
    """

    def __init__(
        self,
        num_classes: int = 11,
        resolution: Sequence[int] = (96, 128),
        widths: Sequence[int] = (32, 48, 64, 64, 96, 96),
        convs: int = 2,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.config = LayoutRefinerConfig(
            num_classes=num_classes,
            resolution=tuple(resolution),  # type: ignore[arg-type]
            widths=tuple(widths),
            convs=convs,
            negative_slope=negative_slope,
        )
        cfg = self.config
        # modules[s] works at scale s (0 = full resolution); the coarsest has no previous output.
        self.modules_by_scale = nn.ModuleList()
        for s in range(cfg.scales):
            prev = cfg.widths[s + 1] if s + 1 < cfg.scales else 0
            self.modules_by_scale.append(
                ConvBlock(cfg.in_channels + prev, cfg.widths[s], cfg.convs, cfg.negative_slope)
            )
        self.to_logits = nn.Conv2d(cfg.widths[0], cfg.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, num_classes + 1, H, W) encoded layout -> (B, num_classes, H, W) logits; H, W multiples of the factor."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"input must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % cfg.factor or x.shape[-1] % cfg.factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {cfg.factor}")
        # 1. The input at every scale (finest first), by area averaging.
        guides = area_pyramid(x, cfg.scales)
        # 2. Cascaded refinement, coarsest scale first.
        out: Tensor | None = None
        for s in reversed(range(cfg.scales)):
            parts = [guides[s]]
            if out is not None:
                parts.append(F.interpolate(out, size=guides[s].shape[-2:], mode="bilinear", align_corners=False))
            out = self.modules_by_scale[s](torch.cat(parts, dim=1))
        # 3. Class logits.
        return self.to_logits(out)

    def logits(self, labels: Tensor, out_size: Sequence[int] | None = None) -> Tensor:
        """Logits for (B, H, W) class-id maps of any size, at ``out_size`` (default: the input's size)."""
        x = class_shares(labels, self.config.num_classes, self.config.resolution)
        logits = self(x)
        size = tuple(out_size) if out_size is not None else tuple(labels.shape[-2:])
        if size != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


@torch.no_grad()
def refine_layout(
    model: LayoutRefiner, coarse: np.ndarray, *, keep_threshold: float = DEFAULT_KEEP_THRESHOLD
) -> np.ndarray:
    """A dense layout (uint8 (H, W), class ids only) from a coarse one (uint8 (H, W), 255 = unlabelled).

    Any size works: the map is encoded and area-resized to the network's resolution, and the logits
    are bilinearly resized back to (H, W). Unlabelled pixels take the network's most likely class.
    A labelled pixel keeps its coarse label while the network gives that label at least
    ``keep_threshold`` probability, and takes the network's class otherwise: coarse labels are mostly
    right, but their outlines are simplified, so the network may move them where it is confident.
    ``keep_threshold=0`` keeps every labelled pixel (fill only); ``keep_threshold > 1`` uses the
    network everywhere.
    """
    coarse = np.asarray(coarse)
    if coarse.ndim != 2 or coarse.dtype != np.uint8:
        raise LayoutError(f"a coarse layout must be (H, W) uint8, got {coarse.shape} {coarse.dtype}")
    n = model.config.num_classes
    coarse = check_label_map(coarse, n)
    model.eval()
    device = next(model.parameters()).device
    labels = torch.from_numpy(np.ascontiguousarray(coarse)).to(device)[None]
    probs = torch.softmax(model.logits(labels), dim=1)[0]  # (C, H, W)
    dense = probs.argmax(0)
    labelled = labels[0] < n
    ids = torch.where(labelled, labels[0].long(), 0)
    keep = labelled & (probs.gather(0, ids[None])[0] >= keep_threshold)
    return torch.where(keep, ids, dense).to(torch.uint8).cpu().numpy()


class CoarseLayoutRefiner:
    """The pipeline step behind ``coarse=true``: a callable coarse layout -> dense layout.

    ``CoarseLayoutRefiner.from_pretrained("weights/layout-refiner")(coarse)`` is :func:`refine_layout` with a
    loaded network; run it on the (H, W) uint8 layout before anything else of the pipeline sees it.
    """

    def __init__(self, model: LayoutRefiner, keep_threshold: float = DEFAULT_KEEP_THRESHOLD) -> None:
        self.model = model.eval()
        self.keep_threshold = keep_threshold

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        keep_threshold: float = DEFAULT_KEEP_THRESHOLD,
    ) -> CoarseLayoutRefiner:
        """Load the network from a model directory."""
        return cls(LayoutRefiner.from_pretrained(directory, device=device), keep_threshold)

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def __call__(self, coarse: np.ndarray) -> np.ndarray:
        """Dense uint8 (H, W) class ids for a coarse uint8 (H, W) layout (255 = unlabelled)."""
        return refine_layout(self.model, coarse, keep_threshold=self.keep_threshold)


__all__ = [
    "DEFAULT_KEEP_THRESHOLD",
    "CoarseLayoutRefiner",
    "LayoutRefiner",
    "LayoutRefinerConfig",
    "class_shares",
    "refine_layout",
]
