"""The array <-> tensor contract of the networks, and the one one-hot encoding of class ids.

Every network input made from numpy arrays, at training and at inference alike, goes through
these functions (resizing happens before, on arrays: :mod:`memory_bank.images`):

- photos and canvases: (H, W, 3) uint8 -> float32 (3, H, W) in [0, 1] (:func:`image_tensor`),
  and back, rounded (:func:`image_array`);
- layouts: (H, W) class ids -> int64 (H, W), 255 (``IGNORE``) = unlabelled (:func:`label_tensor`);
- masks: (H, W) bool -> float32 (1, H, W) of 0 and 1 (:func:`mask_tensor`);
- the synthesis network's samples: the three above as one dict (:func:`input_tensors`).

:func:`one_hot` turns class ids into channels. Its convention for unlabelled pixels: every id
outside ``0..num_classes-1`` (``IGNORE`` = 255 in bank layouts, or anything past the classes)
is unlabelled and gets no class channel; with ``unlabelled_channel=True`` it gets a last, extra
channel instead, so that the channels of every pixel sum to one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> float32 (3, H, W) in [0, 1]; (N, H, W, 3) -> (N, 3, H, W)."""
    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (H, W, 3) or (N, H, W, 3), got {array.dtype} {array.shape}")
    if not array.flags.writeable:  # zarr and PIL arrays can be read-only; torch wants writable memory
        array = array.copy()
    return torch.from_numpy(array).movedim(-1, -3).contiguous().float().div_(255.0)


def image_array(image: torch.Tensor) -> np.ndarray:
    """Float (3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded to the nearest level; (N, 3, H, W) -> (N, H, W, 3)."""
    return image.detach().movedim(-3, -1).mul(255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def label_tensor(label: np.ndarray) -> torch.Tensor:
    """(H, W) class ids (any integer dtype) -> int64 (H, W)."""
    return torch.from_numpy(np.asarray(label).astype(np.int64))


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool -> float32 (1, H, W) of 0 and 1."""
    return torch.from_numpy(np.asarray(mask).astype(np.float32))[None]


def input_tensors(layout: np.ndarray, canvas: np.ndarray, missing: np.ndarray) -> dict[str, torch.Tensor]:
    """The synthesis network's sample contract: ``layout`` int64 (H, W), ``canvas`` float32 (3, H, W)
    in [0, 1] and ``missing`` float32 (1, H, W), from a uint8 layout and canvas and a bool mask.

    The one conversion the training data and the inference pipeline share.
    """
    return {"layout": label_tensor(layout), "canvas": image_tensor(canvas), "missing": mask_tensor(missing)}


def one_hot(
    ids: torch.Tensor, num_classes: int, *, unlabelled_channel: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Integer class ids (B, ...) -> one-hot (B, C, ...), the class axis at dim 1.

    Ids outside ``0..num_classes-1`` are unlabelled: all zeros, or, with ``unlabelled_channel``,
    a one in an extra last channel (C = ``num_classes + 1``). (B,) ids give (B, C).
    """
    if ids.dtype.is_floating_point or ids.ndim < 1:
        raise ValueError(f"class ids must be an integer tensor (B, ...), got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long()
    # Unlabelled ids go to an extra channel, dropped unless asked for.
    hot = F.one_hot(torch.where((ids >= 0) & (ids < num_classes), ids, num_classes), num_classes + 1)
    if not unlabelled_channel:
        hot = hot[..., :num_classes]
    return hot.movedim(-1, 1).to(dtype)


__all__ = ["image_array", "image_tensor", "input_tensors", "label_tensor", "mask_tensor", "one_hot"]
