"""Train the layout refiner on (coarse, fine) pairs coarsened on the fly from a bank's label maps.

Each step draws ``batch_size`` fine label maps at the bank's resolution, flips some horizontally,
coarsens each with :func:`synthesis.coarsen.coarsen_layout` under its own seed, and trains the
network to predict the fine map from the coarse one: cross-entropy on logits at the network's
resolution against the fine map sampled there (nearest), ignoring the fine map's unlabelled (255)
pixels. AdamW with warm-up and cosine decay.

Everything a step draws comes from a generator seeded by ``(seed, step)``, so a resumed run sees the
same batches an uninterrupted one would, and the next batch can be coarsened in a worker thread
while the current one trains (OpenCV releases the GIL).

The run directory holds the latest float32 checkpoint (``config.json`` + ``model.safetensors``),
``training_state.pt`` (optimizer, step, losses, time) and ``run_config.json``; running again on the
same directory resumes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from tqdm import tqdm

from memory_bank import Bank, open_bank
from memory_bank.classes import IGNORE
from synthesis.coarsen import CoarsenConfig, coarsen_layout
from synthesis.evaluation.metrics import SegmentationScores, confusion_matrix
from synthesis.networks.layout_refiner import (
    DEFAULT_KEEP_THRESHOLD,
    LayoutRefiner,
    LayoutRefinerConfig,
    encode_layout,
    from_pretrained,
    refine_layout,
    save_pretrained,
)

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
RUN_CONFIG_FILE = "run_config.json"
SCORES_FILE = "val_scores.json"


@dataclass(frozen=True)
class RefineTrainConfig:
    """Optimisation settings of a refiner run.

    Attributes:
        steps: optimisation steps in total.
        batch_size: layouts per step.
        lr: peak learning rate (AdamW); ``weight_decay`` and ``warmup_steps`` as usual.
        flip: flip half the layouts horizontally.
        checkpoint_every: steps between checkpoints.
        log_every: steps between loss log lines.
        seed: of the initial weights and of every batch.
        threads: torch CPU threads (None: torch's default).
        time_limit_minutes: stop with a checkpoint after this long (resume later).
    """

    steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    flip: bool = True
    checkpoint_every: int = 50
    log_every: int = 25
    seed: int = 0
    threads: int | None = 1
    time_limit_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, checkpoint_every and log_every must be positive")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class RefineRunConfig:
    """A whole run: network, coarsening and optimisation; saved as ``run_config.json``."""

    model: LayoutRefinerConfig = field(default_factory=LayoutRefinerConfig)
    coarsen: CoarsenConfig = field(default_factory=CoarsenConfig)
    train: RefineTrainConfig = field(default_factory=RefineTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "coarsen": self.coarsen.to_dict(), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RefineRunConfig:
        unknown = set(d) - {"model", "coarsen", "train", "_comment"}
        if unknown:
            raise ValueError(f"unknown run config sections: {sorted(unknown)}")
        train = dict(d.get("train", {}))
        bad = set(train) - set(RefineTrainConfig.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown train keys: {sorted(bad)}")
        return cls(
            model=LayoutRefinerConfig.from_dict(d.get("model", {})),
            coarsen=CoarsenConfig.from_dict(d.get("coarsen", {})),
            train=RefineTrainConfig(**train),
        )

    @classmethod
    def load(cls, path: str | Path) -> RefineRunConfig:
        """Read a run config JSON (see ``configs/layout-refiner/``)."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_train(self, **overrides: Any) -> RefineRunConfig:
        """A copy with the given train settings replaced (None values are ignored)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return RefineRunConfig(self.model, self.coarsen, RefineTrainConfig(**{**asdict(self.train), **values}))


@dataclass
class RefineTrainResult:
    """What a run did: final step, loss trace, wall time, and val scores when a val bank was given."""

    out_dir: Path
    step: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    val: dict[str, Any] | None = None


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


def learning_rate(step: int, config: RefineTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def refine_loss(model: LayoutRefiner, coarse: np.ndarray, fine: np.ndarray) -> torch.Tensor:
    """Cross-entropy of the logits at the network's resolution against the fine maps sampled there."""
    cfg = model.config
    device = next(model.parameters()).device
    x = encode_layout(torch.from_numpy(coarse).to(device), cfg.num_classes, cfg.resolution)
    target = torch.from_numpy(fine).to(device)[:, None].float()
    target = F.interpolate(target, size=cfg.resolution, mode="nearest")[:, 0].long()
    return F.cross_entropy(model(x), target, ignore_index=IGNORE)


def train_step(model: LayoutRefiner, optimizer: torch.optim.Optimizer, coarse: np.ndarray, fine: np.ndarray) -> float:
    """One optimisation step on a batch of (coarse, fine) maps; returns the loss before the update."""
    model.train()
    loss = refine_loss(model, coarse, fine)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


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


def evaluate_refiner(
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


def train_refiner(
    bank: str | Path | Bank,
    out_dir: str | Path,
    config: RefineRunConfig = RefineRunConfig(),
    *,
    val_bank: str | Path | Bank | None = None,
    progress: bool = True,
) -> RefineTrainResult:
    """Train (or resume) the layout refiner on ``bank``'s label maps; checkpoints go to ``out_dir``."""
    # 1. Data and run directory
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    train_bank = bank if isinstance(bank, Bank) else open_bank(bank)
    labels = np.asarray(train_bank.labels[:])
    if len(labels) == 0:
        raise ValueError(f"{bank} holds no label maps")
    if len(train_bank.classes) != config.model.num_classes:
        raise ValueError(
            f"the bank has {len(train_bank.classes)} classes but the model {config.model.num_classes}; fix the config"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 2. Model and optimizer, fresh or resumed
    state_path = out / STATE_FILE
    resumed = state_path.is_file()
    if resumed:
        saved = json.loads((out / RUN_CONFIG_FILE).read_text())
        if saved["model"] != config.model.to_dict() or saved["coarsen"] != config.coarsen.to_dict():
            raise ValueError(f"{out} holds a run with another network or coarsening; use a new directory")
        model = from_pretrained(out)
    else:
        torch.manual_seed(tc.seed)
        model = LayoutRefiner.from_config(config.model)
    (out / RUN_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step, losses, seconds_before = 0, [], 0.0
    if resumed:
        state = torch.load(state_path, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step, losses, seconds_before = int(state["step"]), list(state["losses"]), float(state["seconds"])
        log.info("resuming %s at step %d (%.0f s trained so far)", out, step, seconds_before)
    log.info(
        "layout refiner: %d layouts, %d params, resolution %s, batch %d, %d steps",
        len(labels),
        sum(p.numel() for p in model.parameters()),
        config.model.resolution,
        tc.batch_size,
        tc.steps,
    )

    start = time.perf_counter()

    def checkpoint() -> None:
        seconds = seconds_before + time.perf_counter() - start
        meta = {"data": str(getattr(train_bank, "path", bank)), "step": step, "seconds": round(seconds, 1)}
        save_pretrained(model, out, metadata=meta)
        torch.save(
            {"optimizer": optimizer.state_dict(), "step": step, "losses": losses, "seconds": seconds}, state_path
        )

    # 3. Training loop; the next batch is coarsened in a worker thread while this one trains.
    deadline = start + 60 * tc.time_limit_minutes if tc.time_limit_minutes else math.inf
    bar = tqdm(total=tc.steps, initial=step, desc="refiner", unit="step", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as pool:

        def fetch(s: int) -> Future[tuple[np.ndarray, np.ndarray]]:
            return pool.submit(make_batch, labels, config.coarsen, tc.batch_size, tc.seed, s, tc.flip)

        pending = fetch(step) if step < tc.steps else None
        while pending is not None:
            coarse, fine = pending.result()
            pending = fetch(step + 1) if step + 1 < tc.steps else None
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, tc)
            losses.append(train_step(model, optimizer, coarse, fine))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if step % tc.log_every == 0:
                log.info("step %d: loss %.4f (mean of last %d)", step, np.mean(losses[-tc.log_every :]), tc.log_every)
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                checkpoint()
            if time.perf_counter() > deadline and step < tc.steps:
                log.warning("time limit of %.1f min reached at step %d; stopping", tc.time_limit_minutes, step)
                checkpoint()
                break
        if pending is not None:
            pending.cancel()
    bar.close()
    seconds = seconds_before + time.perf_counter() - start

    # 4. Validation: coarse input and refined output against the fine val maps
    result = RefineTrainResult(out_dir=out, step=step, seconds=seconds, losses=losses)
    if val_bank is not None:
        vb = val_bank if isinstance(val_bank, Bank) else open_bank(val_bank)
        result.val = evaluate_refiner(model.eval(), list(np.asarray(vb.labels[:])), config.coarsen, progress=progress)
        (out / SCORES_FILE).write_text(json.dumps({"step": step, "seconds": seconds, **result.val}, indent=2) + "\n")
    return result


def export_float16(run_dir: str | Path, out_dir: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a run's checkpoint as float16 weights (what the repository ships)."""
    return save_pretrained(from_pretrained(run_dir), out_dir, dtype=torch.float16, metadata=metadata)


__all__ = [
    "RefineRunConfig",
    "RefineTrainConfig",
    "RefineTrainResult",
    "evaluate_refiner",
    "export_float16",
    "layout_confusion",
    "learning_rate",
    "make_batch",
    "refine_loss",
    "score_confusion",
    "train_refiner",
    "train_step",
]
