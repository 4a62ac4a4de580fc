"""A compact U-Net that segments photos: the probe of the segmentation-consistency metric.

The paper (§6) scores synthesized images by segmenting them with a network trained on *real*
photos and comparing the result with the input layout. This network is that probe: small
enough to train on a CPU in well under an hour, and stored diffusers style, as a directory
with ``config.json`` (the constructor's arguments) and ``model.safetensors``.

Images enter as uint8 RGB at any size; :meth:`SegmentationNet.predict_logits` resizes them to
the resolution the network was trained at and returns logits at the size the caller asks for,
so every image set (real photos, 96x128 syntheses, ...) is scored against the same label map.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "sims-segmenter"

# Photos are normalised with fixed channel statistics (ImageNet's, in 0..1), so inference
# needs nothing but the checkpoint directory.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegmenterConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"config is for {data.get('model_type')!r}, not {MODEL_TYPE!r}")
        return cls(
            num_classes=int(data["num_classes"]),
            widths=tuple(int(w) for w in data["widths"]),
            resolution=(int(data["resolution"][0]), int(data["resolution"][1])),
            class_names=tuple(str(n) for n in data.get("class_names", ())),
        )


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


class SegmentationNet(nn.Module):
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

    @classmethod
    def from_config(cls, config: SegmenterConfig) -> SegmentationNet:
        return cls(**asdict(config))

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
        """uint8 (N, H, W, 3) or (H, W, 3) RGB → normalised float (N, 3, rows, cols) at the trained resolution."""
        t = _as_tensor(images)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {tuple(t.shape)}")
        device = self.mean.device
        x = t.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.config.resolution:
            # Area averaging when shrinking (no aliasing), bilinear when enlarging.
            shrink = x.shape[-2] >= self.config.resolution[0] and x.shape[-1] >= self.config.resolution[1]
            mode = "area" if shrink else "bilinear"
            kwargs = {} if shrink else {"align_corners": False}
            x = F.interpolate(x, size=self.config.resolution, mode=mode, **kwargs)
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
        t = _as_tensor(images)
        size = tuple(out_size) if out_size is not None else tuple(t.shape[-3:-1])
        return self.predict_logits(t, size).argmax(dim=1).to(torch.uint8).cpu().numpy()

    # Checkpoints (diffusers style)
    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (cast to ``dtype``, e.g. float16) into ``path``."""
        return save_pretrained(self, path, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> SegmentationNet:
        """Load a directory written by :meth:`save_pretrained`; weights come back as float32, in eval mode."""
        return load_pretrained(path, device=device)


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    # Arrays read from zarr or PIL can be read-only; torch wants writable memory.
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()
    return torch.as_tensor(images)


def save_pretrained(model: SegmentationNet, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as a checkpoint directory; returns the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        # Integer buffers (BatchNorm's num_batches_tracked) keep their type.
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    # Each file is written under a temporary name and renamed, so a run killed mid-save leaves
    # the previous checkpoint readable.
    tmp_config, tmp_weights = out / f".{CONFIG_FILE}.tmp", out / f".{WEIGHTS_FILE}.tmp"
    tmp_config.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_file(state, str(tmp_weights), metadata={"format": "pt", "model_type": MODEL_TYPE})
    os.replace(tmp_weights, out / WEIGHTS_FILE)
    os.replace(tmp_config, out / CONFIG_FILE)
    return out


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> SegmentationNet:
    """Load a checkpoint directory (config.json + model.safetensors) into a float32 model in eval mode."""
    root = Path(path)
    config_file, weights_file = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"no segmenter checkpoint at {root} (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = SegmenterConfig.from_dict(json.loads(config_file.read_text()))
    model = SegmentationNet.from_config(config)
    state = load_file(str(weights_file))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval()


__all__ = ["SegmentationNet", "SegmenterConfig", "load_pretrained", "save_pretrained"]
