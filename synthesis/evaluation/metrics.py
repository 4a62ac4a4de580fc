"""Segmentation and reconstruction metrics: confusion matrix, IoU, pixel accuracy, L1.

Small verbs over arrays. A confusion matrix is accumulated over a whole image set (summing
per-image matrices), then reduced: the dataset-level mIoU, as in the segmentation literature,
not a mean of per-image mIoUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory_bank.classes import IGNORE
from retrieval_service.iou import iou64


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE) -> np.ndarray:
    """(C, C) int64 counts: rows are the target class, columns the predicted class.

    Pixels whose target is ``ignore_index`` are left out. A prediction outside ``0..C-1`` on a
    counted pixel is an error, not silently dropped.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target holds values outside 0..{num_classes - 1} (other than {ignore_index})")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction holds values outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class, float64; NaN for classes absent from the target (row sum 0)."""
    conf = _check_confusion(confusion)
    tp = np.diag(conf).astype(np.float64)
    gt = conf.sum(axis=1).astype(np.float64)
    pr = conf.sum(axis=0).astype(np.float64)
    iou = iou64(tp, gt, pr)
    # Only classes present in the target count: a class the image set never shows has no
    # meaningful IoU (and its false positives already lower the other classes' IoU).
    iou[gt == 0] = np.nan
    return iou


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the target; NaN if no pixel was counted."""
    iou = iou_per_class(confusion)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly; NaN if no pixel was counted."""
    conf = _check_confusion(confusion)
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")


def l1_error(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images of the same shape, on the 0..1 scale."""
    a = np.asarray(image)
    b = np.asarray(reference)
    if a.shape != b.shape:
        raise ValueError(f"image {a.shape} and reference {b.shape} differ in shape")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one image set, from its accumulated confusion matrix."""

    confusion: np.ndarray
    miou: float
    pixel_accuracy: float
    class_iou: np.ndarray

    @classmethod
    def from_confusion(cls, confusion: np.ndarray) -> SegmentationScores:
        conf = _check_confusion(confusion)
        return cls(
            confusion=conf, miou=mean_iou(conf), pixel_accuracy=pixel_accuracy(conf), class_iou=iou_per_class(conf)
        )

    def to_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, object]:
        names = list(class_names) if class_names else [str(i) for i in range(len(self.class_iou))]
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, self.class_iou, strict=True)},
        }


def _check_confusion(confusion: np.ndarray) -> np.ndarray:
    conf = np.asarray(confusion)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {conf.shape}")
    return conf


__all__ = [
    "SegmentationScores",
    "confusion_matrix",
    "iou_per_class",
    "l1_error",
    "mean_iou",
    "pixel_accuracy",
]
