"""What the canvas builder plugs together, as protocols, with the default implementations.

- :class:`~retrieval_service.types.Retriever` (defined with the retrieval types):
  ``retrieve(layout, options) -> RetrievalResult``. The in-process
  :class:`~retrieval_service.engine.RetrievalEngine` is one, :class:`~synthesis.remote.RemoteRetriever` another.
- :class:`SegmentSource`: ``segment(id) -> memory_bank.Segment``. A :class:`~memory_bank.Bank`
  is one; :class:`~synthesis.canvas.segment_cache.CachedSegments` wraps a bank with a per-image
  LRU cache, so reading many segments of one image decodes its chunks once.
- :class:`Aligner`: places a retrieved segment in the target frame (paper §4.3). The default,
  :class:`IdentityAligner`, leaves it where it was in its source photo: bank masks are already
  in the image frame at the working resolution. The learned transformation network matches it,
  and :class:`BatchAligner` too: it can align all segments of a layout in one call.
- :class:`Orderer`: back-to-front painting order (paper §4.4). The default is the layout rule
  of :mod:`synthesis.canvas.order_rule`; the learned ordering network matches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from memory_bank import Segment


@runtime_checkable
class SegmentSource(Protocol):
    """Anything that reads a bank segment by id."""

    def segment(self, segment_id: int) -> Segment:
        """The segment: crop, full-frame mask and context, boxes, class and image."""
        ...


@runtime_checkable
class Aligner(Protocol):
    """Places a retrieved segment in the target frame.

    Called as ``aligner(layout, target_mask, pixels, mask)`` with the (H, W) uint8 layout, the
    (H, W) bool mask of the target component, and the segment as (H, W, 3) uint8 ``pixels``
    (zero outside its mask) with its (H, W) bool ``mask`` where it lay in its source photo.
    Returns the placed ``(pixels, mask)`` in the same shapes and dtypes; only pixels under the
    returned mask are used.
    """

    def __call__(
        self, layout: np.ndarray, target_mask: np.ndarray, pixels: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class BatchAligner(Aligner, Protocol):
    """An :class:`Aligner` that can also place all segments of a layout in one call (optional).

    ``align_many(layout, targets, pixels, masks)`` takes lists of what :class:`Aligner` takes one
    of and returns one placed ``(pixels, mask)`` per segment, as calling the aligner on each
    would (up to float noise). The canvas builder uses it when present, so an aligner can batch
    its network and share per-layout work.
    """

    def align_many(
        self,
        layout: np.ndarray,
        targets: Sequence[np.ndarray],
        pixels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...


@runtime_checkable
class Orderer(Protocol):
    """Back-to-front painting order: ``orderer(layout, masks, class_ids) -> indices``.

    ``masks`` are the placed (H, W) bool masks of the segments to paint and ``class_ids`` their
    classes; the result is a permutation of ``range(len(masks))``, farthest first.
    """

    def __call__(self, layout: np.ndarray, masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> list[int]: ...


class IdentityAligner:
    """Leaves every segment where it was in its source photo (the bank frame is the target frame)."""

    def __call__(
        self, layout: np.ndarray, target_mask: np.ndarray, pixels: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return pixels, mask
