"""Bank segments as the canvas builder reads them: decoded once per image, through an LRU cache.

:class:`CachedSegments` wraps a :class:`~memory_bank.Bank`, so reading many segments of one image
decodes its chunks once; :class:`SegmentPixels` is what it returns.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from memory_bank import Bank, ClassTable, Segment, SegmentConfig
from memory_bank.segments import segment_context


class ImageArrays:
    """The decoded arrays of one bank image: ``photo`` (H, W, 3) uint8, ``components`` (H, W) uint16,
    and ``label`` (H, W) uint8, decoded on first use (canvases never need it)."""

    def __init__(self, bank: Bank, image_id: int) -> None:
        self._bank, self._image_id = bank, image_id
        self.photo = _read_only(np.asarray(bank.photos[image_id]))
        self.components = _read_only(np.asarray(bank.components[image_id]))
        self._label: np.ndarray | None = None

    @property
    def label(self) -> np.ndarray:
        if self._label is None:  # two threads may both decode it; the result is the same
            self._label = _read_only(np.asarray(self._bank.labels[self._image_id]))
        return self._label


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class SegmentPixels:
    """A segment as the canvas needs it: (H, W, 3) uint8 ``pixels`` (zero outside the mask) and (H, W) bool ``mask``."""

    segment_id: int
    image_id: int
    class_id: int
    pixels: np.ndarray
    mask: np.ndarray


class CachedSegments:
    """A bank's segments read through a per-image LRU cache (thread-safe).

    A bank stores one chunk per image for its photo, label map and component map; a segment
    read decodes all three (~5 ms at 360x480). A canvas reads ~30 segments, often several per
    image, so images are kept decoded, up to ``max_images`` of them (~1 MB each at 360x480).
    :meth:`segment_pixels` is the canvas builder's faster read: no context, so no label map.
    """

    def __init__(self, bank: Bank, max_images: int = 64) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.bank = bank
        self.max_images = max_images
        self._cache: OrderedDict[int, ImageArrays] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._image_id = bank.column("image_id")
        self._class_id = bank.column("class_id")
        self._local = bank.column("local_index")
        self._bbox = bank.column("bbox")
        self._cbox = bank.column("context_box")
        self._area = bank.column("area")
        # First segment id of every image: segment ids of one image are contiguous (bank format §5).
        self._first = np.searchsorted(self._image_id, np.arange(bank.num_images), side="left")

    # The bank's identity, so that callers need only this object
    @property
    def classes(self) -> ClassTable:
        return self.bank.classes

    @property
    def config(self) -> SegmentConfig:
        return self.bank.config

    @property
    def resolution(self) -> tuple[int, int]:
        return self.bank.resolution

    @property
    def num_images(self) -> int:
        return self.bank.num_images

    def segment_ids(self, class_id: int | None = None) -> np.ndarray:
        """Ids of all segments, or of one class, ascending."""
        return self.bank.segment_ids(class_id)

    def image_of(self, segment_ids: np.ndarray) -> np.ndarray:
        """Image id of each segment id."""
        return self._image_id[np.asarray(segment_ids, np.int64)]

    def segment_at(self, image_id: int, local_map: np.ndarray) -> np.ndarray:
        """Segment ids for a component map of one image (``local_index + 1``, 0 = none): -1 where 0."""
        local_map = np.asarray(local_map, np.int64)
        return np.where(local_map > 0, self._first[image_id] + local_map - 1, -1)

    def image(self, image_id: int) -> ImageArrays:
        """The decoded arrays of one image (cached)."""
        with self._lock:
            got = self._cache.get(image_id)
            if got is not None:
                self._cache.move_to_end(image_id)
                self.hits += 1
                return got
        # Decode outside the lock so that threads reading different images do not wait.
        arrays = ImageArrays(self.bank, image_id)
        with self._lock:
            self.misses += 1
            self._cache[image_id] = arrays
            self._cache.move_to_end(image_id)
            while len(self._cache) > self.max_images:
                self._cache.popitem(last=False)
        return arrays

    def _check_id(self, segment_id: int) -> None:
        if not 0 <= segment_id < self.bank.num_segments:
            raise KeyError(f"segment {segment_id} is not in this bank (0..{self.bank.num_segments - 1})")

    def segment_pixels(self, segment_id: int) -> SegmentPixels:
        """The segment's pixels and mask in its source frame (what the identity aligner places)."""
        self._check_id(segment_id)
        image_id = int(self._image_id[segment_id])
        arrays = self.image(image_id)
        mask = arrays.components == self._local[segment_id] + 1
        y0, x0, y1, x1 = (int(v) for v in self._bbox[segment_id])
        pixels = np.zeros(arrays.photo.shape, np.uint8)  # calloc: only the box is touched
        cv2.copyTo(arrays.photo[y0:y1, x0:x1], mask[y0:y1, x0:x1].view(np.uint8), pixels[y0:y1, x0:x1])
        return SegmentPixels(int(segment_id), image_id, int(self._class_id[segment_id]), pixels, mask)

    def segment(self, segment_id: int) -> Segment:
        """Like :meth:`memory_bank.Bank.segment`, from the cache."""
        self._check_id(segment_id)
        image_id = int(self._image_id[segment_id])
        arrays = self.image(image_id)
        bbox = tuple(int(v) for v in self._bbox[segment_id])
        cbox = tuple(int(v) for v in self._cbox[segment_id])
        mask = arrays.components == self._local[segment_id] + 1
        y0, x0, y1, x1 = bbox
        crop = np.where(mask[y0:y1, x0:x1, None], arrays.photo[y0:y1, x0:x1], 0).astype(np.uint8)
        return Segment(
            segment_id=int(segment_id),
            image_id=image_id,
            class_id=int(self._class_id[segment_id]),
            bbox=bbox,  # type: ignore[arg-type]
            context_box=cbox,  # type: ignore[arg-type]
            area=int(self._area[segment_id]),
            crop=crop,
            mask=mask,
            context=segment_context(arrays.label, cbox),
        )
