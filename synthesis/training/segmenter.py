"""Train the segmentation probe on the real photos of a bank (CamVid train).

Steps: random rescale (zoom in by up to ``max_zoom``) + random crop at the training resolution
+ horizontal flip + mild brightness/contrast jitter; cross-entropy that ignores 255, with class
weights ``(median frequency / frequency) ** class_balance`` so thin classes (poles, signs) are
not drowned by road and sky; AdamW with warm-up and cosine decay.

The run directory, checkpoints, resume and time limit are the harness's
(:mod:`synthesis.training.harness`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from tqdm import tqdm

from memory_bank import Bank, open_bank
from memory_bank.classes import IGNORE
from memory_bank.images import resize_label, resize_photo
from synthesis.configs import JsonConfig
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix
from synthesis.networks.segmenter import SegmentationNet, SegmenterConfig
from synthesis.training.harness import Progress, Schedule, Trainer, run_training, seed_everything, set_threads

log = logging.getLogger(__name__)

SCORES_FILE = "val_scores.json"


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Everything a segmenter run depends on (the ``train`` section of ``configs/segmenter/*.json``).

    The network is the U-Net of ``widths`` at ``resolution``; its classes are the bank's.
    """

    resolution: tuple[int, int] = (192, 256)
    widths: tuple[int, ...] = SegmenterConfig.widths
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_zoom: float = 1.5
    jitter: float = 0.1
    low_res_prob: float = 0.0
    class_balance: float = 0.5
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 50
    eval_every: int = 250
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        if not 0.0 <= self.low_res_prob <= 1.0:
            raise ValueError(f"low_res_prob must be in [0, 1], got {self.low_res_prob}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def schedule(self) -> Schedule:
        """The harness's cadence: val scores every ``eval_every`` steps (0: only at the end)."""
        return Schedule(
            self.steps,
            self.checkpoint_every,
            self.log_every,
            eval_every=self.eval_every or None,
            keep_checkpoints=self.keep_checkpoints,
        )


@dataclass(frozen=True)
class SegmenterRunConfig(JsonConfig):
    """A run of ``sims train segmenter``: ``{"train": {...}}`` (``configs/segmenter/``)."""

    train: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)


@dataclass
class TrainResult:
    """What a run did: final step, loss trace, wall time and (if a val bank was given) val scores."""

    out_dir: Path
    step: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    val_scores: SegmentationScores | None = None


class TrainingImages:
    """Photos and label maps held in memory, with the augmented batch sampler."""

    def __init__(self, photos: np.ndarray, labels: np.ndarray) -> None:
        if photos.ndim != 4 or photos.shape[-1] != 3 or labels.shape != photos.shape[:3]:
            raise ValueError(f"expected photos (N, H, W, 3) and labels (N, H, W), got {photos.shape}, {labels.shape}")
        if len(photos) == 0:
            raise ValueError("no training images")
        self.photos = np.ascontiguousarray(photos, dtype=np.uint8)
        self.labels = np.ascontiguousarray(labels, dtype=np.uint8)

    @classmethod
    def from_bank(cls, bank: Bank, limit: int | None = None) -> TrainingImages:
        n = bank.num_images if limit is None else min(limit, bank.num_images)
        return cls(np.asarray(bank.photos[:n]), np.asarray(bank.labels[:n]))

    def __len__(self) -> int:
        return len(self.photos)

    def class_frequencies(self, num_classes: int) -> np.ndarray:
        """Fraction of labelled pixels of each class."""
        counts = np.bincount(self.labels[self.labels != IGNORE].ravel(), minlength=num_classes)[:num_classes]
        return counts / max(int(counts.sum()), 1)

    def sample(
        self,
        rng: np.random.Generator,
        batch_size: int,
        resolution: tuple[int, int],
        max_zoom: float,
        jitter: float,
        low_res_prob: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch of augmented (uint8 (N, rows, cols, 3), uint8 (N, rows, cols)) crops.

        With probability ``low_res_prob`` a photo crop is shrunk to half size and enlarged back,
        so the probe also learns images that come at half its resolution (e.g. 96x128 syntheses
        scored by a 192x256 probe).
        """
        rows, cols = resolution
        xs = np.empty((batch_size, rows, cols, 3), np.uint8)
        ys = np.empty((batch_size, rows, cols), np.uint8)
        for b in range(batch_size):
            i = int(rng.integers(len(self)))
            # The whole photo fills the training frame at zoom 1; zooming in crops a random window.
            zoom = float(rng.uniform(1.0, max_zoom))
            h, w = max(rows, round(rows * zoom)), max(cols, round(cols * zoom))
            photo, label = resize_photo(self.photos[i], (h, w)), resize_label(self.labels[i], (h, w))
            y0, x0 = int(rng.integers(h - rows + 1)), int(rng.integers(w - cols + 1))
            photo, label = photo[y0 : y0 + rows, x0 : x0 + cols], label[y0 : y0 + rows, x0 : x0 + cols]
            if rng.random() < 0.5:
                photo, label = photo[:, ::-1], label[:, ::-1]
            if jitter:
                gain, bias = rng.uniform(1 - jitter, 1 + jitter), rng.uniform(-jitter, jitter) * 255
                photo = np.clip(photo.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
            if low_res_prob and rng.random() < low_res_prob:
                photo = resize_photo(resize_photo(photo, (rows // 2, cols // 2)), (rows, cols))
            xs[b], ys[b] = photo, label
        return xs, ys


def class_weights(frequencies: np.ndarray, balance: float) -> np.ndarray:
    """``(median / frequency) ** balance`` over the classes that occur; 1 for absent classes."""
    freq = np.asarray(frequencies, np.float64)
    present = freq > 0
    weights = np.ones_like(freq)
    if present.any() and balance:
        weights[present] = (np.median(freq[present]) / freq[present]) ** balance
    return weights.astype(np.float32)


def learning_rate(step: int, config: SegmenterTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_step(
    model: SegmentationNet,
    optimizer: torch.optim.Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    weights: torch.Tensor | None = None,
) -> float:
    """One optimisation step on a uint8 batch; returns the loss before the update."""
    model.train()
    x = model.preprocess(images)
    y = torch.as_tensor(labels).to(x.device).long()
    logits = model(x)
    loss = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(
    model: SegmentationNet, photos: np.ndarray, labels: np.ndarray, batch_size: int = 4, progress: bool = False
) -> SegmentationScores:
    """Scores of ``model`` on photos against label maps, at the label maps' resolution."""
    n = model.config.num_classes
    conf = np.zeros((n, n), np.int64)
    for s in tqdm(range(0, len(photos), batch_size), desc="evaluating", unit="batch", disable=not progress):
        batch = np.asarray(photos[s : s + batch_size])
        target = np.asarray(labels[s : s + batch_size])
        pred = model.predict_labels(batch, out_size=target.shape[-2:])
        conf += confusion_matrix(pred, target, n)
    return SegmentationScores.from_confusion(conf)


class SegmenterTrainer(Trainer):
    """The U-Net, its optimizer and the augmented crops of a bank's photos; val scores on another bank's."""

    def __init__(
        self,
        data: TrainingImages,
        config: SegmenterTrainConfig,
        class_names: tuple[str, ...],
        val: TrainingImages | None,
    ) -> None:
        self.data, self.config, self.val = data, config, val
        self.model = SegmentationNet(
            num_classes=len(class_names), widths=config.widths, resolution=config.resolution, class_names=class_names
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        frequencies = data.class_frequencies(len(class_names))
        self.class_weights = torch.from_numpy(class_weights(frequencies, config.class_balance))

    def training_step(self, progress: Progress) -> float:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(progress.step, c)
        images, labels = self.data.sample(self.rng, c.batch_size, c.resolution, c.max_zoom, c.jitter, c.low_res_prob)
        return train_step(self.model, self.optimizer, images, labels, self.class_weights)

    def evaluate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        s = evaluate(self.model, self.val.photos, self.val.labels)
        return {"val_miou": s.miou, "val_pixel_accuracy": s.pixel_accuracy}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "numpy_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_generator"]


def train_segmenter(
    bank: str | Path | Bank,
    out_dir: str | Path,
    config: SegmenterTrainConfig = SegmenterTrainConfig(),
    val_bank: str | Path | Bank | None = None,
    resume: bool = False,
    progress: bool = True,
    time_limit_minutes: float | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) a segmenter on ``bank``'s photos into the run directory ``out_dir``.

    With ``val_bank`` the final network is scored on its photos (``val_scores.json``).
    """
    # 1. Data
    set_threads(config.threads)
    seed_everything(config.seed)
    train_bank = bank if isinstance(bank, Bank) else open_bank(bank)
    data = TrainingImages.from_bank(train_bank)
    val = None
    if val_bank is not None:
        val = TrainingImages.from_bank(val_bank if isinstance(val_bank, Bank) else open_bank(val_bank))
    # 2. The trainer, run by the harness
    trainer = SegmenterTrainer(data, config, tuple(train_bank.classes.names), val)
    log.info(
        "segmenter: %d images, %d params, resolution %s, class weights %s",
        len(data),
        sum(p.numel() for p in trainer.model.parameters()),
        config.resolution,
        [round(float(w), 2) for w in trainer.class_weights],
    )
    run = run_training(
        trainer,
        out_dir,
        config.schedule(),
        SegmenterRunConfig(config).to_dict(),
        resume=resume,
        time_limit_minutes=time_limit_minutes,
        progress=progress,
        name="train segmenter",
    )
    # 3. Final validation
    result = TrainResult(out_dir=run.out_dir, step=run.step, seconds=run.seconds, losses=run.losses)
    if val is not None:
        model = trainer.model
        result.val_scores = evaluate(model, val.photos, val.labels, progress=progress)
        scores = {"step": run.step, "seconds": run.seconds, **result.val_scores.to_dict(model.config.class_names)}
        (run.out_dir / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n")
        log.info("val mIoU %.4f, pixel accuracy %.4f", result.val_scores.miou, result.val_scores.pixel_accuracy)
    return result


__all__ = [
    "SegmenterRunConfig",
    "SegmenterTrainConfig",
    "SegmenterTrainer",
    "TrainResult",
    "TrainingImages",
    "class_weights",
    "evaluate",
    "learning_rate",
    "train_segmenter",
    "train_step",
]
