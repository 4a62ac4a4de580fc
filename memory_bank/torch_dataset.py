"""A torch ``Dataset`` over bank segments, for generators that train on them directly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from memory_bank.images import resize_label, resize_photo
from memory_bank.reader import Bank


class SegmentDataset(Dataset):
    """Segments of a bank (optionally of some classes) as tensors.

    Each item is a dict with ``crop`` (3, h, w) float in [0, 1], ``mask`` (1, h, w) float in
    {0, 1} (the segment's footprint inside its bbox), ``class_id``, ``segment_id``,
    ``image_id`` and ``bbox``. With ``crop_size=(h, w)`` every crop is resized to that size so
    the default collate can batch them; without it, crops keep their own sizes.
    """

    def __init__(
        self,
        bank: Bank,
        classes: list[int] | None = None,
        crop_size: tuple[int, int] | None = None,
    ) -> None:
        self.bank = bank
        ids = bank.segment_ids() if classes is None else np.concatenate([bank.segment_ids(c) for c in classes])
        self.ids = np.sort(ids)
        self.crop_size = crop_size

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seg = self.bank.segment(int(self.ids[index]))
        crop, mask = seg.crop, seg.crop_mask.astype(np.uint8)
        if self.crop_size is not None:
            crop = resize_photo(crop, self.crop_size)
            mask = resize_label(mask, self.crop_size)
        return {
            "crop": torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "class_id": seg.class_id,
            "segment_id": seg.segment_id,
            "image_id": seg.image_id,
            "bbox": torch.tensor(seg.bbox),
        }
