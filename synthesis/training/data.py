"""Training data for the synthesis network: the sample contract, and the datasets that meet it.

A training sample is a dict of tensors:

- ``layout``: int64 (H, W) class ids, 255 = unlabelled;
- ``canvas``: float32 (3, H, W) in [0, 1];
- ``missing``: float32 (1, H, W), 1 where the canvas has no pixel;
- ``photo``: float32 (3, H, W) in [0, 1], the target.

and, to train the full-resolution canvas blend (:mod:`synthesis.networks.blend`), all three of

- ``full_canvas``: float32 (3, H', W') in [0, 1], the canvas at the output resolution;
- ``full_kept``: float32 (1, H', W'), 1 where that canvas pixel is real (neither missing nor elided);
- ``full_photo``: float32 (3, H', W') in [0, 1], the target at the output resolution;

and optionally ``full_layout``: int64 (H', W') class ids at the output resolution, which the
full-resolution hole refiner and the discriminator read (without it, ``layout`` is resized).

Any torch ``Dataset`` yielding such dicts trains the network. A dataset may also carry

- ``provenance``: a JSON-able dict (bank version, cache recipe, ...) recorded in every checkpoint;
- ``palette``: a (256, 3) uint8 colour table, used to draw layouts in sample grids;
- ``set_epoch(epoch)``: called at the start of every epoch, for datasets that redraw per epoch.

Datasets are built from a :class:`DataConfig` by kind, through :func:`build_dataset`:

- ``simulated``: the canvas cache written by ``synthesis.canvas.simulate`` (stenciled, colour
  transferred, elided canvases; what SIMS trains on);
- ``blocks``: bank photos with random rectangles removed, a cheap stand-in for smoke runs and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from memory_bank import IGNORE, Bank, open_bank
from memory_bank.images import resize_label, resize_photo
from synthesis.tensors import image_tensor, label_tensor

SAMPLE_KEYS = ("layout", "canvas", "missing", "photo")
FULL_RESOLUTION_KEYS = ("full_canvas", "full_kept", "full_photo")
#: Keys a full-resolution sample may carry besides those; batched when every sample has them.
OPTIONAL_FULL_KEYS = ("full_layout",)


@dataclass(frozen=True)
class DataConfig:
    """Where the training samples come from (part of a training config).

    Attributes:
        kind: a registered dataset kind (``simulated`` or ``blocks``).
        bank: path of the bank the samples are drawn from (``blocks``; recorded for ``simulated``).
        cache_dir: the canvas cache directory (``simulated``).
        options: extra keyword arguments for the dataset's constructor.
    """

    kind: str = "simulated"
    bank: str | None = None
    cache_dir: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


#: A factory turns a data config and the training resolution (rows, cols) into a dataset.
DatasetFactory = Callable[[DataConfig, tuple[int, int]], Dataset]
_FACTORIES: dict[str, DatasetFactory] = {}


def register_dataset(kind: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a dataset factory under a ``data.kind`` name."""

    def wrap(factory: DatasetFactory) -> DatasetFactory:
        _FACTORIES[kind] = factory
        return factory

    return wrap


def build_dataset(config: DataConfig, size: tuple[int, int]) -> Dataset:
    """The dataset a data config names, at ``size`` = (rows, cols)."""
    factory = _FACTORIES.get(config.kind)
    if factory is None:
        raise ValueError(f"unknown data kind {config.kind!r}; known: {sorted(_FACTORIES)}")
    return factory(config, size)


def check_sample(sample: Mapping[str, Any], size: tuple[int, int], num_classes: int) -> None:
    """Raise ValueError unless ``sample`` meets the contract at ``size`` (checked once, on the first sample)."""
    missing_keys = [k for k in SAMPLE_KEYS if k not in sample]
    if missing_keys:
        raise ValueError(f"training sample lacks {missing_keys} (has {sorted(sample)})")
    h, w = size
    want = {"layout": ((h, w), torch.int64), "canvas": ((3, h, w), torch.float32)}
    want |= {"missing": ((1, h, w), torch.float32), "photo": ((3, h, w), torch.float32)}
    for key, (shape, dtype) in want.items():
        t = sample[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"sample[{key!r}] must be {shape} {dtype}, got {got}")
    for key in ("canvas", "missing", "photo"):
        t = sample[key]
        if float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError(f"sample[{key!r}] must be in [0, 1], got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    present = [k for k in FULL_RESOLUTION_KEYS if k in sample]
    if present:
        if len(present) != len(FULL_RESOLUTION_KEYS):
            raise ValueError(f"a full-resolution sample needs all of {FULL_RESOLUTION_KEYS}, got {present}")
        fh, fw = sample["full_canvas"].shape[-2:]
        full = {"full_canvas": (3, fh, fw), "full_kept": (1, fh, fw), "full_photo": (3, fh, fw)}
        for key, shape in full.items():
            t = sample[key]
            if tuple(t.shape) != shape or t.dtype != torch.float32 or float(t.min()) < 0 or float(t.max()) > 1:
                raise ValueError(f"sample[{key!r}] must be {shape} float32 in [0, 1], got {tuple(t.shape)} {t.dtype}")
    ids = torch.unique(sample["layout"])
    bad = ids[(ids < 0) | ((ids >= num_classes) & (ids != IGNORE))]
    if bad.numel():
        raise ValueError(f"layout holds ids {bad[:8].tolist()} outside 0..{num_classes - 1} and {IGNORE}")


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the contract's tensors of several samples into a batch (other keys are dropped)."""
    keys = SAMPLE_KEYS + (FULL_RESOLUTION_KEYS if all(k in samples[0] for k in FULL_RESOLUTION_KEYS) else ())
    keys += tuple(k for k in OPTIONAL_FULL_KEYS if all(k in s for s in samples))
    return {k: torch.stack([s[k] for s in samples]) for k in keys}


def empty_canvas(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parametric (CRN-style) view of a batch: canvas all zeros, every pixel missing."""
    out = dict(batch)
    out["canvas"] = torch.zeros_like(batch["canvas"])
    out["missing"] = torch.ones_like(batch["missing"])
    if "full_canvas" in batch:
        out["full_canvas"] = torch.zeros_like(batch["full_canvas"])
        out["full_kept"] = torch.zeros_like(batch["full_kept"])
    return out


def bank_arrays(bank: Bank, size: tuple[int, int], images: Sequence[int] | None = None) -> tuple[np.ndarray, ...]:
    """Photos (N, H, W, 3) uint8 and labels (N, H, W) uint8 of a bank, resized to ``size``."""
    ids = range(bank.num_images) if images is None else images
    photos = np.stack([resize_photo(np.asarray(bank.photos[i]), size) for i in ids])
    labels = np.stack([resize_label(np.asarray(bank.labels[i]), size) for i in ids])
    return photos, labels


class BlockCanvasDataset(Dataset):
    """Bank photos with random rectangles cut out: canvases for smoke runs and tests, not for SIMS.

    Each item's holes are drawn from ``(seed, epoch, index)``, so an item is reproducible whatever
    order or process reads it, and :meth:`set_epoch` gives fresh holes every epoch.
    """

    def __init__(
        self,
        photos: np.ndarray,
        labels: np.ndarray,
        *,
        blocks: tuple[int, int] = (1, 4),
        max_block_fraction: float = 0.5,
        seed: int = 0,
        palette: np.ndarray | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        if photos.ndim != 4 or photos.shape[-1] != 3 or labels.shape != photos.shape[:3]:
            raise ValueError(f"photos (N, H, W, 3) and labels (N, H, W) do not match: {photos.shape}, {labels.shape}")
        if not 0 < blocks[0] <= blocks[1] or not 0 < max_block_fraction <= 1:
            raise ValueError(f"bad block settings: blocks={blocks}, max_block_fraction={max_block_fraction}")
        self.photos, self.labels = photos, labels
        self.blocks, self.max_block_fraction, self.seed = blocks, max_block_fraction, seed
        self.epoch = 0
        if palette is not None:
            self.palette = palette
        self.provenance = {"kind": "blocks", "images": len(photos), "seed": seed, **(provenance or {})}

    @classmethod
    def from_bank(cls, bank: Bank, size: tuple[int, int], **kwargs: Any) -> BlockCanvasDataset:
        """All images of a bank at ``size``; provenance records the bank's path and version."""
        photos, labels = bank_arrays(bank, size)
        prov = {"bank": str(bank.path), "bank_version": bank.version}
        return cls(photos, labels, palette=bank.classes.palette(), provenance=prov, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        photo = image_tensor(self.photos[index])
        h, w = photo.shape[1:]
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        missing = torch.zeros(1, h, w)
        for _ in range(int(rng.integers(self.blocks[0], self.blocks[1] + 1))):
            bh = int(rng.integers(1, max(2, int(h * self.max_block_fraction) + 1)))
            bw = int(rng.integers(1, max(2, int(w * self.max_block_fraction) + 1)))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            missing[:, y : y + bh, x : x + bw] = 1.0
        return {
            "layout": label_tensor(self.labels[index]),
            "canvas": photo * (1.0 - missing),
            "missing": missing,
            "photo": photo,
        }


class SimulatedCanvases(Dataset):
    """The canvas cache of ``synthesis.canvas.simulate``, with its recipe and bank version as provenance."""

    def __init__(self, inner: Dataset, provenance: Mapping[str, Any], palette: np.ndarray | None = None) -> None:
        self.inner = inner
        self.provenance = dict(provenance)
        if palette is not None:
            self.palette = palette

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.inner[index]


@register_dataset("blocks")
def _blocks(config: DataConfig, size: tuple[int, int]) -> Dataset:
    if not config.bank:
        raise ValueError("data.kind 'blocks' needs data.bank (a bank directory; or pass --bank)")
    return BlockCanvasDataset.from_bank(open_bank(config.bank), size, **config.options)


@register_dataset("simulated")
def _simulated(config: DataConfig, size: tuple[int, int]) -> Dataset:
    if not config.cache_dir:
        raise ValueError("data.kind 'simulated' needs data.cache_dir (a canvas cache; or pass --cache)")
    from synthesis.canvas.simulate import SimulatedCanvasDataset

    inner = SimulatedCanvasDataset(config.cache_dir, size=size, **config.options)
    info = getattr(inner, "info", None)
    prov: dict[str, Any] = {"kind": "simulated", "cache_dir": str(config.cache_dir), "samples": len(inner)}
    if info is not None and hasattr(info, "to_dict"):
        prov["cache"] = info.to_dict()
        prov["bank_version"] = getattr(info, "bank_version", None)
    palette = None
    if config.bank:
        bank = open_bank(config.bank)
        palette = bank.classes.palette()
        prov |= {"bank": str(config.bank), "bank_version_opened": bank.version}
    return SimulatedCanvases(inner, prov, palette)
