"""Brute-force retrieval: a plain numpy full scan per component, as the paper's code did.

It is the reference the engine is tested and benchmarked against: slow, obvious, exact.
Scores are float64 ``IoU(mask) + IoU(context)`` at the bank's fine grid (or, for ``full``
mode, on full-frame pixels); ties go to the lower segment id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memory_bank import Segment
from memory_bank.classes import IGNORE
from memory_bank.segments import segment_context
from retrieval_service.iou import iou64


def score_one(
    query_mask: np.ndarray,
    query_context: np.ndarray,
    bank_mask: np.ndarray,
    bank_context: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask IoU and context IoU of one query component against rows of bank codes.

    ``query_mask`` (bytes,) uint8 packed bits, ``query_context`` (cells,) uint8; the bank
    arrays have one row per segment.
    """
    a = int(np.bitwise_count(query_mask).sum())
    b = np.bitwise_count(bank_mask).sum(axis=1)
    inter = np.bitwise_count(bank_mask & query_mask[None, :]).sum(axis=1)
    present = query_context != IGNORE
    ca = int(present.sum())
    cb = (bank_context != IGNORE).sum(axis=1)
    cinter = ((bank_context == query_context[None, :]) & present[None, :]).sum(axis=1)
    return iou64(inter, a, b), iou64(cinter, ca, cb)


def brute_force_topk(
    query_mask: np.ndarray,
    query_context: np.ndarray,
    bank_mask: np.ndarray,
    bank_context: np.ndarray,
    segment_ids: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of one component over the given bank rows.

    Returns ``(segment_ids, scores, mask_iou, context_iou)``, best first.
    """
    miou, ciou = score_one(query_mask, query_context, bank_mask, bank_context)
    score = miou + ciou
    order = np.lexsort((segment_ids, -score))[:k]
    return segment_ids[order], score[order], miou[order], ciou[order]


def pixel_brute_force_topk(
    label: np.ndarray, mask: np.ndarray, context_box: np.ndarray, segments: Sequence[Segment], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of one component over bank segments (from :meth:`Bank.segment`), scored literally
    on full-frame pixels.

    ``mask`` is the component's (H, W) bool footprint in ``label``; its context is ``label``
    inside ``context_box``, like every bank segment's. Returns ``(segment_ids, scores,
    mask_iou, context_iou)``, best first.
    """
    query_context = segment_context(label, context_box)
    present = query_context != IGNORE
    ids = np.array([s.segment_id for s in segments], np.int64)
    inter = np.array([np.sum(mask & s.mask) for s in segments], np.int64)
    cinter = np.array([np.sum((query_context == s.context) & present) for s in segments], np.int64)
    b = np.array([s.mask.sum() for s in segments], np.int64)
    cb = np.array([np.sum(s.context != IGNORE) for s in segments], np.int64)
    miou, ciou = iou64(inter, int(mask.sum()), b), iou64(cinter, int(present.sum()), cb)
    score = miou + ciou
    order = np.lexsort((ids, -score))[:k]
    return ids[order], score[order], miou[order], ciou[order]
