"""Train the layout refiner on (coarse, fine) pairs coarsened on the fly from a bank's label maps.

Each step draws ``batch_size`` fine label maps at the bank's resolution, flips some horizontally,
coarsens each with :func:`synthesis.coarsen.coarsen_layout` under its own seed, and trains the
network to predict the fine map from the coarse one: cross-entropy on logits at the network's
resolution against the fine map sampled there (nearest), ignoring the fine map's unlabelled (255)
pixels. AdamW with warm-up and cosine decay.

Everything a step draws comes from a generator seeded by ``(seed, step)``, so a resumed run sees the
same batches an uninterrupted one would, and the next batch can be coarsened in a worker thread
while the current one trains (OpenCV releases the GIL). The run directory, checkpoints, resume and
time limit are the harness's (:mod:`synthesis.training.harness`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from tqdm import tqdm

from memory_bank import Bank
from memory_bank.classes import IGNORE
from memory_bank.images import resize_label
from synthesis.coarsen import CoarsenConfig, coarsen_layout
from synthesis.configs import JsonConfig
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix
from synthesis.model_directory import read_metadata
from synthesis.networks.layout_refiner import (
    DEFAULT_KEEP_THRESHOLD,
    LayoutRefiner,
    LayoutRefinerConfig,
    class_shares,
    refine_layout,
)
from synthesis.tensors import label_tensor
from synthesis.training.harness import BankTraining, OptimizerTrainer, Progress, ScheduledSettings, TrainResult
from synthesis.training.optim import adamw, optimizer_step, set_lr, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayoutRefinerTrainConfig(ScheduledSettings):
    """Optimisation settings of a refiner run.

    Attributes:
        steps: optimisation steps in total.
        batch_size: layouts per step.
        lr: peak learning rate (AdamW); ``weight_decay`` and ``warmup_steps`` as usual.
        flip: flip half the layouts horizontally.
        checkpoint_every: steps between checkpoints; the newest ``keep_checkpoints`` are kept.
        log_every: steps between loss log lines.
        seed: of the initial weights and of every batch.
        threads: torch CPU threads (None: torch's default).
    """

    steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    flip: bool = True
    checkpoint_every: int = 50
    log_every: int = 25
    threads: int | None = 1  # the batch thread coarsens beside it

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, checkpoint_every and log_every must be positive")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class LayoutRefinerRunConfig(JsonConfig):
    """A whole run (``configs/layout-refiner/``): network, coarsening and optimisation."""

    model: LayoutRefinerConfig = field(default_factory=LayoutRefinerConfig)
    coarsen: CoarsenConfig = field(default_factory=CoarsenConfig)
    train: LayoutRefinerTrainConfig = field(default_factory=LayoutRefinerTrainConfig)


# ---------------------------------------------------------------- data


def make_batch(
    labels: np.ndarray, coarsen: CoarsenConfig, batch_size: int, seed: int, step: int, flip: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(coarse, fine) uint8 (B, H, W) pairs for one step; a pure function of ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(labels), batch_size)
    flips = rng.random(batch_size) < 0.5
    seeds = rng.integers(0, 2**31 - 1, batch_size)
    fine = np.stack([labels[i][:, ::-1] if flip and f else labels[i] for i, f in zip(idx, flips, strict=True)])
    fine = np.ascontiguousarray(fine)
    coarse = np.stack([coarsen_layout(f, coarsen, int(s)) for f, s in zip(fine, seeds, strict=True)])
    return coarse, fine


def refine_loss(model: LayoutRefiner, coarse: np.ndarray, fine: np.ndarray) -> torch.Tensor:
    """Cross-entropy of the logits at the network's resolution against the fine maps sampled there."""
    cfg = model.config
    device = next(model.parameters()).device
    x = class_shares(torch.from_numpy(coarse).to(device), cfg.num_classes, cfg.resolution)
    target = label_tensor(np.stack([resize_label(f, cfg.resolution) for f in fine])).to(device)
    return F.cross_entropy(model(x), target, ignore_index=IGNORE)


def train_step(model: LayoutRefiner, optimizer: torch.optim.Optimizer, coarse: np.ndarray, fine: np.ndarray) -> float:
    """One optimisation step on a batch of (coarse, fine) maps; returns the loss before the update."""
    model.train()
    return optimizer_step(optimizer, refine_loss(model, coarse, fine))


# ---------------------------------------------------------------- scores


def layout_confusion(pred: np.ndarray, fine: np.ndarray, num_classes: int) -> np.ndarray:
    """(C+1, C+1) confusion of a layout against the fine map; pixels where the fine map is 255 are left out.

    A predicted 255 (unlabelled) is column C: it counts as wrong for pixel accuracy and as a miss
    (false negative) of the fine class in its IoU, never as a false positive of another class.
    Row C is always empty, so the scores' class C is NaN and the mean IoU is over the real classes.
    """
    p = np.where(np.asarray(pred) < num_classes, pred, num_classes)
    return confusion_matrix(p, fine, num_classes + 1)


def score_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, mIoU and per-class IoU (the real classes only) of a :func:`layout_confusion` sum."""
    s = SegmentationScores.from_confusion(confusion)
    return {
        "pixel_accuracy": s.pixel_accuracy,
        "miou": s.miou,
        "class_iou": [None if np.isnan(v) else float(v) for v in s.class_iou[:-1]],
    }


def evaluate_layout_refiner(
    model: LayoutRefiner,
    fines: Sequence[np.ndarray],
    coarsen: CoarsenConfig,
    *,
    seed: int = 0,
    keep_thresholds: Sequence[float] = (DEFAULT_KEEP_THRESHOLD,),
    progress: bool = False,
) -> dict[str, Any]:
    """Scores of the coarse layouts and of the refined ones against ``fines`` (image ``i`` coarsened with ``seed + i``).

    Returns ``{"coarse": scores, "refined": {threshold: scores}, "coverage": share of fine-labelled
    pixels labelled in the coarse map, "coarse_labelled_accuracy": accuracy on those pixels}``.
    """
    n = model.config.num_classes
    conf_coarse = np.zeros((n + 1, n + 1), np.int64)
    conf_refined = {t: np.zeros_like(conf_coarse) for t in keep_thresholds}
    for i, fine in enumerate(tqdm(fines, desc="evaluating", unit="layout", disable=not progress)):
        fine = np.asarray(fine)
        coarse = coarsen_layout(fine, coarsen, seed + i)
        conf_coarse += layout_confusion(coarse, fine, n)
        for t in keep_thresholds:
            conf_refined[t] += layout_confusion(refine_layout(model, coarse, keep_threshold=t), fine, n)
    labelled = conf_coarse[:, :n].sum()
    return {
        "coarse": score_confusion(conf_coarse),
        "refined": {float(t): score_confusion(c) for t, c in conf_refined.items()},
        "coverage": float(labelled / max(conf_coarse.sum(), 1)),
        "coarse_labelled_accuracy": float(np.trace(conf_coarse[:n, :n]) / max(labelled, 1)),
    }


# ---------------------------------------------------------------- the run


class LayoutRefinerTrainer(OptimizerTrainer):
    """The refiner, its optimizer and the fine label maps; the next batch is coarsened while this one trains."""

    scores_file = "val_scores.json"

    def __init__(self, bank: Bank, config: LayoutRefinerRunConfig, val_bank: Bank | None, progress: bool) -> None:
        self.labels = np.asarray(bank.labels[:])
        if len(self.labels) == 0:
            raise ValueError(f"{bank.path} holds no label maps")
        if len(bank.classes) != config.model.num_classes:
            raise ValueError(
                f"the bank has {len(bank.classes)} classes but the model {config.model.num_classes}; fix the config"
            )
        self.config, self.data, self.val_bank = config, str(bank.path), val_bank
        self.model = LayoutRefiner.from_config(config.model)
        tc = config.train
        self.optimizer = adamw(self.model, tc)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: tuple[int, Future[tuple[np.ndarray, np.ndarray]]] | None = None
        log.info(
            "layout refiner: %d layouts, %d params, resolution %s, batch %d, %d steps",
            len(self.labels),
            sum(p.numel() for p in self.model.parameters()),
            config.model.resolution,
            tc.batch_size,
            tc.steps,
        )

    def _fetch(self, step: int) -> Future[tuple[np.ndarray, np.ndarray]]:
        tc = self.config.train
        return self._pool.submit(make_batch, self.labels, self.config.coarsen, tc.batch_size, tc.seed, step, tc.flip)

    def training_step(self, progress: Progress) -> float:
        step, tc = progress.step, self.config.train
        pending = self._pending[1] if self._pending and self._pending[0] == step else self._fetch(step)
        self._pending = (step + 1, self._fetch(step + 1)) if step + 1 < progress.steps else None
        coarse, fine = pending.result()
        set_lr(self.optimizer, warmup_cosine(step, tc))
        return train_step(self.model, self.optimizer, coarse, fine)

    def finish(self, result: TrainResult, progress: bool) -> TrainResult:
        """The last 50 steps' loss; with a val bank, coarse and refined val layouts scored (``val_scores.json``)."""
        recent = result.losses[-50:]
        lines = [
            f"trained to step {result.step} in {result.seconds / 60:.1f} min, "
            f"loss {f'{sum(recent) / len(recent):.4f}' if recent else 'n/a'}; run in {result.out_dir}"
        ]
        if self.val_bank is None:
            return result.summarised({}, lines)
        fines = list(np.asarray(self.val_bank.labels[:]))
        val = evaluate_layout_refiner(self.model.eval(), fines, self.config.coarsen, progress=progress)
        lines.append(json.dumps({k: val[k] for k in ("coverage", "coarse_labelled_accuracy")}))
        c = val["coarse"]
        lines.append(f"coarse  vs fine: pixel accuracy {c['pixel_accuracy']:.4f}, mIoU {c['miou']:.4f}")
        for t, r in val["refined"].items():
            lines.append(f"refined vs fine (keep {t}): pixel accuracy {r['pixel_accuracy']:.4f}, mIoU {r['miou']:.4f}")
        return result.summarised(val, lines)

    def close(self) -> None:
        """Stop the batch thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def metadata(self) -> dict[str, Any]:
        return {"data": self.data}

    def check_resume(self, checkpoint: Path) -> None:
        saved = read_metadata(checkpoint).get("train_config", {}).get("coarsen")
        if saved is not None and saved != self.config.coarsen.to_dict():
            raise ValueError(f"{checkpoint} was trained with another coarsening; use a new directory")


#: ``train_layout_refiner(bank, out, config, *, val_bank=None, resume=False, progress=True,
#: time_limit_minutes=None)``: the layout refiner on ``bank``'s label maps into the run directory ``out``
#: (:class:`~synthesis.training.harness.BankTraining`). With ``val_bank`` the coarse and refined val
#: layouts are scored at the end (``val_scores.json``).
train_layout_refiner = BankTraining("layout-refiner", LayoutRefinerRunConfig, LayoutRefinerTrainer)


__all__ = [
    "LayoutRefinerRunConfig",
    "LayoutRefinerTrainConfig",
    "LayoutRefinerTrainer",
    "evaluate_layout_refiner",
    "layout_confusion",
    "make_batch",
    "refine_loss",
    "score_confusion",
    "train_layout_refiner",
    "train_step",
]
