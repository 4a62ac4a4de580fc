"""Train the segmentation probe on the real photos of a bank (CamVid train).

Steps: random rescale (zoom in by up to ``max_zoom``) + random crop at the training resolution
+ horizontal flip + mild brightness/contrast jitter; cross-entropy that ignores 255, with class
weights ``(median frequency / frequency) ** class_balance`` so thin classes (poles, signs) are
not drowned by road and sky; AdamW with warm-up and cosine decay.

The run directory holds the latest float32 checkpoint (``config.json`` + ``model.safetensors``)
and ``training_state.pt`` (optimizer, step, random state); a run started again on the same
directory resumes where the last checkpoint left it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from tqdm import tqdm

from memory_bank import Bank, open_bank
from memory_bank.classes import IGNORE
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix
from synthesis.networks.segmenter import SegmentationNet, SegmenterConfig, load_pretrained, save_pretrained

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
SCORES_FILE = "val_scores.json"


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Everything a segmenter run depends on; saved next to the checkpoint as ``train_config.json``."""

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
    eval_every: int = 250
    seed: int = 0
    threads: int | None = None
    time_limit_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        if not 0.0 <= self.low_res_prob <= 1.0:
            raise ValueError(f"low_res_prob must be in [0, 1], got {self.low_res_prob}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            photo = cv2.resize(self.photos[i], (w, h), interpolation=cv2.INTER_AREA)
            label = cv2.resize(self.labels[i], (w, h), interpolation=cv2.INTER_NEAREST)
            y0, x0 = int(rng.integers(h - rows + 1)), int(rng.integers(w - cols + 1))
            photo, label = photo[y0 : y0 + rows, x0 : x0 + cols], label[y0 : y0 + rows, x0 : x0 + cols]
            if rng.random() < 0.5:
                photo, label = photo[:, ::-1], label[:, ::-1]
            if jitter:
                gain, bias = rng.uniform(1 - jitter, 1 + jitter), rng.uniform(-jitter, jitter) * 255
                photo = np.clip(photo.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
            if low_res_prob and rng.random() < low_res_prob:
                half = cv2.resize(photo, (cols // 2, rows // 2), interpolation=cv2.INTER_AREA)
                photo = cv2.resize(half, (cols, rows), interpolation=cv2.INTER_LINEAR)
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


def train_segmenter(
    bank: str | Path | Bank,
    out_dir: str | Path,
    config: SegmenterTrainConfig = SegmenterTrainConfig(),
    val_bank: str | Path | Bank | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a segmenter on ``bank``'s photos; checkpoints go to ``out_dir``."""
    # 1. Data and run directory
    if config.threads:
        torch.set_num_threads(config.threads)
    train_bank = bank if isinstance(bank, Bank) else open_bank(bank)
    data = TrainingImages.from_bank(train_bank)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    num_classes = len(train_bank.classes)

    # 2. Model and optimizer, fresh or resumed
    state_path = out / STATE_FILE
    if state_path.is_file():
        model = load_pretrained(out)
        if tuple(model.config.resolution) != tuple(config.resolution) or model.config.widths != config.widths:
            raise ValueError(f"{out} holds a run with another resolution or widths; use a new directory")
    else:
        torch.manual_seed(config.seed)
        model = SegmentationNet(
            num_classes=num_classes,
            widths=config.widths,
            resolution=config.resolution,
            class_names=tuple(train_bank.classes.names),
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    step, losses, seconds_before = 0, [], 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, losses, seconds_before = int(state["step"]), list(state["losses"]), float(state["seconds"])
        log.info("resuming %s at step %d (%.0f s trained so far)", out, step, seconds_before)
    weights = torch.from_numpy(class_weights(data.class_frequencies(num_classes), config.class_balance))
    log.info(
        "segmenter: %d images, %d params, resolution %s, class weights %s",
        len(data),
        sum(p.numel() for p in model.parameters()),
        config.resolution,
        [round(float(w), 2) for w in weights],
    )
    val = (
        TrainingImages.from_bank(val_bank if isinstance(val_bank, Bank) else open_bank(val_bank)) if val_bank else None
    )

    def checkpoint() -> None:
        save_pretrained(model, out)
        tmp = state_path.with_name(f".{STATE_FILE}.tmp")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "rng": rng.bit_generator.state,
                "step": step,
                "losses": losses,
                "seconds": seconds_before + time.perf_counter() - start,
            },
            tmp,
        )
        # The state goes last: a run killed in between resumes newer weights with the previous optimizer state.
        os.replace(tmp, state_path)

    # 3. Training loop
    start = time.perf_counter()
    deadline = start + 60 * config.time_limit_minutes if config.time_limit_minutes else math.inf
    bar = tqdm(total=config.steps, initial=step, desc="segmenter", unit="step", disable=not progress)
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        images, labels = data.sample(
            rng, config.batch_size, config.resolution, config.max_zoom, config.jitter, config.low_res_prob
        )
        losses.append(train_step(model, optimizer, images, labels, weights))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()
            log.info("step %d: loss %.4f (mean of last 50), checkpoint saved", step, np.mean(losses[-50:]))
        if val is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            s = evaluate(model, val.photos, val.labels)
            log.info("step %d: val mIoU %.4f, pixel accuracy %.4f", step, s.miou, s.pixel_accuracy)
        if time.perf_counter() > deadline:
            log.warning("time limit of %.1f min reached at step %d; stopping", config.time_limit_minutes, step)
            checkpoint()
            break
    bar.close()
    seconds = seconds_before + time.perf_counter() - start

    # 4. Final validation
    result = TrainResult(out_dir=out, step=step, seconds=seconds, losses=losses)
    if val is not None:
        result.val_scores = evaluate(model, val.photos, val.labels, progress=progress)
        scores = {"step": step, "seconds": seconds, **result.val_scores.to_dict(model.config.class_names)}
        (out / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n")
        log.info("val mIoU %.4f, pixel accuracy %.4f", result.val_scores.miou, result.val_scores.pixel_accuracy)
    return result


def export_float16(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a run's checkpoint as float16 weights (what the repository ships)."""
    return save_pretrained(load_pretrained(run_dir), out_dir, dtype=torch.float16)


__all__ = [
    "SegmenterTrainConfig",
    "TrainResult",
    "TrainingImages",
    "class_weights",
    "evaluate",
    "export_float16",
    "learning_rate",
    "train_segmenter",
    "train_step",
]
