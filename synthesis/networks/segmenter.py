"""A compact U-Net that segments photos: the probe of the segmentation-consistency metric.

The paper (§6) scores synthesized images by segmenting them with a network trained on *real*
photos and comparing the result with the input layout. This network is that probe: small
enough to train on a CPU in well under an hour, and stored as a model directory
(:mod:`synthesis.model_directory`).

Images enter as uint8 RGB at any size; :meth:`SegmentationNet.predict_logits` resizes them to
the resolution the network was trained at and returns logits at the size the caller asks for,
so every image set (real photos, 96x128 syntheses, ...) is scored against the same label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn

from memory_bank.images import resize_photo
from synthesis.model_directory import NetworkConfig, PretrainedNetwork
from synthesis.tensors import image_tensor

# Photos are normalised with fixed channel statistics (ImageNet's, in 0..1), so inference
# needs nothing but the checkpoint directory.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegmenterConfig(NetworkConfig):
    """Constructor arguments of :class:`SegmentationNet`, saved as ``config.json``.

    Attributes:
        num_classes: output channels (CamVid: 11; 255 is never predicted).
        widths: channels of each U-Net level, finest first; ``len(widths) - 1`` poolings.
        resolution: ``(rows, cols)`` the network was trained at; inputs are resized to it.
        class_names: names of the output classes, for reports.
    """

    num_classes: int = 11
    widths: tuple[int, ...] = (16, 32, 64, 128, 192)
    resolution: tuple[int, int] = (192, 256)
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must hold at least two positive channel counts, got {self.widths}")
        step = 2 ** (len(self.widths) - 1)
        if any(r < step or r % step for r in self.resolution):
            raise ValueError(f"resolution {self.resolution} must be a positive multiple of {step} (the total pooling)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")


class _DoubleConv(nn.Sequential):
    """conv3x3 → BN → ReLU, twice: the U-Net block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SegmentationNet(PretrainedNetwork, config_class=SegmenterConfig, kind="segmenter"):
    """U-Net: max-pool encoder, bilinear-upsampling decoder with skip concatenation.

    ``forward`` takes normalised float images (N, 3, H, W) with H and W multiples of
    ``2 ** (len(widths) - 1)`` and returns logits (N, num_classes, H, W).
    """

    def __init__(
        self,
        num_classes: int = 11,
        widths: tuple[int, ...] = SegmenterConfig.widths,
        resolution: tuple[int, int] = SegmenterConfig.resolution,
        class_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.config = SegmenterConfig(
            num_classes=num_classes, widths=tuple(widths), resolution=tuple(resolution), class_names=tuple(class_names)
        )
        w = self.config.widths
        self.down = nn.ModuleList([_DoubleConv(3, w[0])] + [_DoubleConv(w[i - 1], w[i]) for i in range(1, len(w))])
        self.up = nn.ModuleList([_DoubleConv(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], num_classes, 1)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2 ** (len(self.down) - 1)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % step or x.shape[3] % step:
            raise ValueError(f"expected (N, 3, H, W) with H, W multiples of {step}, got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)

    # Inference on uint8 photos
    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) or (H, W, 3) RGB → normalised float (N, 3, rows, cols) at the trained resolution.

        Images are resized as the training crops were (:func:`memory_bank.images.resize_photo`).
        """
        a = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {tuple(a.shape)}")
        if tuple(a.shape[1:3]) != tuple(self.config.resolution):
            a = np.stack([resize_photo(p, self.config.resolution) for p in a])
        x = image_tensor(a).to(self.mean.device)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def predict_logits(
        self, images: np.ndarray | torch.Tensor, out_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Logits (N, C, rows, cols) of uint8 images, bilinearly resized to ``out_size`` if given."""
        was_training = self.training
        self.eval()
        try:
            logits = self(self.preprocess(images))
        finally:
            self.train(was_training)
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits

    def predict_labels(self, images: np.ndarray | torch.Tensor, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 label maps (N, rows, cols) of uint8 images; ``out_size`` defaults to the input size."""
        size = tuple(out_size) if out_size is not None else tuple(images.shape[-3:-1])
        return self.predict_logits(images, size).argmax(dim=1).to(torch.uint8).cpu().numpy()


__all__ = ["SegmentationNet", "SegmenterConfig"]
