"""Train the segmentation probe on the real photos of a bank (CamVid train).

Steps: random rescale (zoom in by up to ``max_zoom``) + random crop at the training resolution
+ horizontal flip + mild brightness/contrast jitter; cross-entropy that ignores 255, with class
weights ``(median frequency / frequency) ** class_balance`` so thin classes (poles, signs) are
not drowned by road and sky; AdamW with warm-up and cosine decay.

The run directory, checkpoints, resume and time limit are the harness's
(:mod:`synthesis.training.harness`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from tqdm import tqdm

from memory_bank import Bank
from memory_bank.classes import IGNORE
from memory_bank.images import resize_label, resize_photo
from synthesis.configs import JsonConfig
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix
from synthesis.networks.segmenter import SegmentationNet, SegmenterConfig
from synthesis.training.harness import BankTraining, OptimizerTrainer, Progress, ScheduledSettings, TrainResult
from synthesis.training.optim import adamw, optimizer_step, set_lr, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterTrainConfig(ScheduledSettings):
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
    log_every: int = 50
    eval_every: int = 250

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        if not 0.0 <= self.low_res_prob <= 1.0:
            raise ValueError(f"low_res_prob must be in [0, 1], got {self.low_res_prob}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")


@dataclass(frozen=True)
class SegmenterRunConfig(JsonConfig):
    """A run of ``sims train segmenter``: ``{"train": {...}}`` (``configs/segmenter/``)."""

    train: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)


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
    return optimizer_step(optimizer, F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE))


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


class SegmenterTrainer(OptimizerTrainer):
    """The U-Net, its optimizer and the augmented crops of a bank's photos; val scores on another bank's."""

    scores_file = "val_scores.json"

    def __init__(self, bank: Bank, run_config: SegmenterRunConfig, val_bank: Bank | None, progress: bool) -> None:
        config = run_config.train
        class_names = tuple(bank.classes.names)
        self.data, self.config = TrainingImages.from_bank(bank), config
        self.val = TrainingImages.from_bank(val_bank) if val_bank is not None else None
        self.model = SegmentationNet(
            num_classes=len(class_names), widths=config.widths, resolution=config.resolution, class_names=class_names
        )
        self.optimizer = adamw(self.model, config)
        self.rng = np.random.default_rng(config.seed)
        frequencies = self.data.class_frequencies(len(class_names))
        self.class_weights = torch.from_numpy(class_weights(frequencies, config.class_balance))
        log.info(
            "segmenter: %d images, %d params, resolution %s, class weights %s",
            len(self.data),
            sum(p.numel() for p in self.model.parameters()),
            config.resolution,
            [round(float(w), 2) for w in self.class_weights],
        )

    def training_step(self, progress: Progress) -> float:
        c = self.config
        set_lr(self.optimizer, warmup_cosine(progress.step, c))
        images, labels = self.data.sample(self.rng, c.batch_size, c.resolution, c.max_zoom, c.jitter, c.low_res_prob)
        return train_step(self.model, self.optimizer, images, labels, self.class_weights)

    def evaluate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        s = evaluate(self.model, self.val.photos, self.val.labels)
        return {"val_miou": s.miou, "val_pixel_accuracy": s.pixel_accuracy}

    def finish(self, result: TrainResult, progress: bool) -> TrainResult:
        """With a val bank, the final network scored on its photos (``val_scores.json``)."""
        lines = [f"trained to step {result.step} in {result.seconds / 60:.1f} min; run in {result.out_dir}"]
        if self.val is None:
            return result.summarised({}, lines)
        s = evaluate(self.model, self.val.photos, self.val.labels, progress=progress)
        lines.append(f"val mIoU {s.miou:.4f}, pixel accuracy {s.pixel_accuracy:.4f}")
        log.info("val mIoU %.4f, pixel accuracy %.4f", s.miou, s.pixel_accuracy)
        return result.summarised(s.to_dict(self.model.config.class_names), lines)


#: ``train_segmenter(bank, out, config, *, val_bank=None, resume=False, progress=True, time_limit_minutes=None)``:
#: a segmenter on ``bank``'s photos into the run directory ``out``
#: (:class:`~synthesis.training.harness.BankTraining`). With ``val_bank`` it is scored on its photos every
#: ``eval_every`` steps and at the end (``val_scores.json``).
train_segmenter = BankTraining("segmenter", SegmenterRunConfig, SegmenterTrainer)


__all__ = [
    "SegmenterRunConfig",
    "SegmenterTrainConfig",
    "SegmenterTrainer",
    "TrainingImages",
    "class_weights",
    "evaluate",
    "train_segmenter",
    "train_step",
]
