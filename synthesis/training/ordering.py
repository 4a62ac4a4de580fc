"""Training and evaluation of the ordering network (paper §4.4) on pairs labelled by the layout rule.

CamVid has no depth, so every pair of neighbouring segments of a layout (overlapping or within
``adjacency`` px) is labelled by :func:`synthesis.canvas.order_rule.pair_order` (tiers, containment,
lower-in-frame-is-nearer); pairs the rule cannot decide are left out. The network learns that rule from
masks and layout windows; the class-prior baseline learns only a fixed order of classes from the same
pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from tqdm import tqdm

from memory_bank import IGNORE, Bank
from synthesis.canvas.order_rule import DepthTiers, paint_order, pair_order
from synthesis.configs import JsonConfig
from synthesis.networks.geometry import window_boxes
from synthesis.networks.ordering import (
    PRIOR_NAME,
    ClassPrior,
    LearnedOrderer,
    OrderingConfig,
    OrderingNet,
    PairInputs,
    boxes_of,
    neighbour_pairs,
    reduce_components,
    sample_pairs,
    window_coords,
)
from synthesis.tensors import one_hot
from synthesis.training.harness import BankTraining, OptimizerTrainer, Progress, RunSettings, Schedule, TrainResult
from synthesis.training.optim import adamw, optimizer_step, set_lr, warmup_cosine_by_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderingTrainConfig(RunSettings):
    """Hyper-parameters of ``sims train ordering`` (the ``train`` section of ``configs/ordering/*.json``).

    The run is counted in epochs over the training pairs; a checkpoint and a log record (with the
    accuracies) close every epoch.
    """

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    flip: bool = True


@dataclass(frozen=True)
class OrderingRunConfig(JsonConfig):
    """A run of ``sims train ordering``: ``{"model": {...}, "train": {...}}`` (``configs/ordering/``)."""

    model: OrderingConfig = field(default_factory=OrderingConfig)
    train: OrderingTrainConfig = field(default_factory=OrderingTrainConfig)


@dataclass
class PairSet:
    """Labelled pairs of one bank, with their windows stored compactly.

    ``masks`` (P, 2, h, w) uint8 coverage x 255; ``layout`` (P, h, w) uint8 class (255: none); ``windows``
    (P, 4) float ``[cy, cx, h, w]``; ``classes`` (P, 2) int64; ``y`` (P,) float, 1 where a is in front;
    ``image`` (P,) the bank image; ``index`` (P, 2) the segments' ``local_index``.
    """

    masks: torch.Tensor
    layout: torch.Tensor
    windows: torch.Tensor
    classes: torch.Tensor
    y: torch.Tensor
    image: np.ndarray
    index: np.ndarray
    frame: tuple[int, int]
    undecided: int = 0

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def inputs(self, idx: torch.Tensor, num_classes: int, size: tuple[int, int]) -> PairInputs:
        """Network inputs of the pairs ``idx``."""
        m = self.masks[idx].float() / 255.0
        onehot = one_hot(self.layout[idx], num_classes)
        coords = window_coords(self.windows[idx], self.frame, size)
        return PairInputs(m[:, :1], m[:, 1:], onehot, coords, self.classes[idx, 0], self.classes[idx, 1])


def image_pairs(
    bank: Bank, image_id: int, config: OrderingConfig, tiers: DepthTiers
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[tuple[int, int]], np.ndarray, np.ndarray]:
    """One bank image's segment masks, classes, layout, neighbour pairs, rule labels (+1, -1, 0) and
    component map (``i + 1`` where segment ``i`` of the image lies)."""
    comp = np.asarray(bank.components[image_id])
    layout = np.asarray(bank.labels[image_id])
    ids = np.flatnonzero(bank.column("image_id") == image_id)
    local = bank.column("local_index")[ids]
    classes = bank.column("class_id")[ids].astype(np.int64)
    masks = [comp == int(lo) + 1 for lo in local]
    pairs = neighbour_pairs(masks, config.adjacency)
    labels = np.array([pair_order(masks[i], masks[j], classes[i], classes[j], tiers) for i, j in pairs], np.int64)
    return masks, classes, layout, pairs, labels, comp


def build_pairs(
    bank: Bank, config: OrderingConfig, tiers: DepthTiers, progress: bool = True, limit: int | None = None
) -> PairSet:
    """Every decided neighbour pair of every image of ``bank`` (of the first ``limit`` images), windowed."""
    k = config.work_scale
    parts: dict[str, list] = {n: [] for n in ("masks", "layout", "windows", "classes", "y", "image", "index")}
    undecided = 0
    n_images = bank.num_images if limit is None else min(limit, bank.num_images)
    for i in tqdm(range(n_images), disable=not progress, desc="pairs"):
        masks, classes, layout, pairs, labels, comp = image_pairs(bank, i, config, tiers)
        keep = labels != 0
        undecided += int((~keep).sum())
        if not keep.any():
            continue
        pair_t = torch.as_tensor(np.asarray(pairs, np.int64)[keep])
        boxes = torch.from_numpy(boxes_of(masks)).float()
        reduced = reduce_components(comp, len(masks), k)
        inputs = sample_pairs(
            torch.from_numpy(np.ascontiguousarray(layout[::k, ::k])),
            reduced,
            boxes,
            torch.from_numpy(classes),
            pair_t,
            bank.resolution,
            config,
        )
        parts["masks"].append((torch.cat([inputs.mask_a, inputs.mask_b], 1) * 255).round().to(torch.uint8))
        lab = torch.where(
            inputs.layout.sum(1) > 0, inputs.layout.argmax(1), torch.full_like(inputs.layout[:, 0], IGNORE)
        )
        parts["layout"].append(lab.to(torch.uint8))
        parts["windows"].append(window_boxes(boxes[pair_t[:, 0]], boxes[pair_t[:, 1]], config))
        parts["classes"].append(torch.from_numpy(classes)[pair_t])
        parts["y"].append(torch.from_numpy((labels[keep] > 0).astype(np.float32)))
        parts["image"].append(np.full(int(keep.sum()), i))
        parts["index"].append(pair_t.numpy())
    if not parts["y"]:
        raise ValueError("the bank has no pair of neighbouring segments the rule can order")
    return PairSet(
        masks=torch.cat(parts["masks"]),
        layout=torch.cat(parts["layout"]),
        windows=torch.cat(parts["windows"]),
        classes=torch.cat(parts["classes"]),
        y=torch.cat(parts["y"]),
        image=np.concatenate(parts["image"]),
        index=np.concatenate(parts["index"]),
        frame=bank.resolution,
        undecided=undecided,
    )


@torch.no_grad()
def predict(model: OrderingNet, pairs: PairSet, config: OrderingConfig, batch_size: int = 256) -> np.ndarray:
    """(P,) P(a in front of b) for every pair of the set."""
    model.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(pairs)))
        out.append(torch.sigmoid(model(*pairs.inputs(idx, config.num_classes, config.input_size).as_args())))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def accuracy(prob: np.ndarray, y: np.ndarray) -> float:
    """Share of pairs decided as the rule does (a probability of exactly 0.5 counts half)."""
    y = np.asarray(y) > 0.5
    correct = np.where(prob == 0.5, 0.5, ((prob > 0.5) == y).astype(np.float64))
    return float(correct.mean()) if correct.size else float("nan")


class OrderingTrainer(OptimizerTrainer):
    """The pairwise network, its optimizer and the rule-labelled pairs of one bank (plus val pairs)."""

    scores_file = "train_summary.json"

    def __init__(self, bank: Bank, run_config: OrderingRunConfig, val_bank: Bank | None, progress: bool) -> None:
        config, cfg = run_config.model, run_config.train
        self.names = bank.classes.names
        if len(self.names) != config.num_classes:
            raise ValueError(f"model has {config.num_classes} classes, the bank {len(self.names)}")
        self.config, self.cfg = config, cfg
        tiers = DepthTiers.from_class_names(self.names)
        self.pairs = build_pairs(bank, config, tiers, progress)
        self.val = build_pairs(val_bank, config, tiers, progress) if val_bank is not None else None
        log.info(
            "pairs: %d train (%d undecided left out), %d val",
            len(self.pairs),
            self.pairs.undecided,
            len(self.val) if self.val else 0,
        )
        a, b = self.pairs.classes[:, 0].numpy(), self.pairs.classes[:, 1].numpy()
        self.prior = ClassPrior.fit(a, b, self.pairs.y.numpy(), len(self.names))
        self.model = OrderingNet.from_config(config)
        self.optimizer = adamw(self.model, cfg)
        self.steps_per_epoch = -(-len(self.pairs) // cfg.batch_size)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.order: torch.Tensor | None = None  # this epoch's order of the pairs

    def schedule(self) -> Schedule:
        """A checkpoint, a log record and the accuracies at the end of every epoch."""
        epoch = self.steps_per_epoch
        steps = self.cfg.epochs * epoch
        return Schedule(steps, epoch, epoch, eval_every=epoch, keep_checkpoints=self.cfg.keep_checkpoints)

    def training_step(self, progress: Progress) -> float:
        index = progress.step % self.steps_per_epoch
        if index == 0 or self.order is None:
            self.order = torch.randperm(len(self.pairs), generator=self.generator)
        # Warm-up, then cosine decay over the run's progress (by steps or by time, whichever is further).
        set_lr(self.optimizer, warmup_cosine_by_progress(self.cfg.lr, progress.fraction))
        self.model.train()
        idx = self.order[index * self.cfg.batch_size : (index + 1) * self.cfg.batch_size]
        inputs = self.pairs.inputs(idx, self.config.num_classes, self.config.input_size)
        if self.cfg.flip and torch.rand((), generator=self.generator) < 0.5:
            inputs = inputs.flipped()
        return optimizer_step(
            self.optimizer, F.binary_cross_entropy_with_logits(self.model(*inputs.as_args()), self.pairs.y[idx])
        )

    def evaluate(self) -> dict[str, float]:
        head = _head(self.pairs, 4000)  # a cheap train-accuracy estimate
        scores = {"train_accuracy": accuracy(predict(self.model, head, self.config), head.y.numpy())}
        if self.val is not None:
            y = self.val.y.numpy()
            scores["val_accuracy"] = accuracy(predict(self.model, self.val, self.config), y)
            prior = self.prior.predict(self.val.classes[:, 0].numpy(), self.val.classes[:, 1].numpy())
            scores["val_class_prior"] = accuracy(prior, y)
        return scores

    def finish(self, result: TrainResult, progress: bool) -> TrainResult:
        """Epochs, pair counts, the last epoch's loss and the accuracies (``train_summary.json``)."""
        epoch = self.steps_per_epoch
        scores: dict[str, Any] = {
            "epochs": round(result.step / epoch, 3),
            "train_pairs": len(self.pairs),
            "val_pairs": len(self.val) if self.val else 0,
            "train_loss": float(np.mean(result.losses[-epoch:])) if result.losses else float("nan"),
            **(result.scores or self.evaluate()),
        }
        line = f"trained {scores['epochs']} epochs on {scores['train_pairs']} pairs in {result.seconds / 60:.1f} min"
        if "val_accuracy" in scores:
            line += f"; val accuracy {scores['val_accuracy']:.4f} (class prior {scores['val_class_prior']:.4f})"
        return result.summarised(scores, [line])

    def extra_files(self) -> dict[str, str | bytes]:
        return {PRIOR_NAME: self.prior.to_json(self.names)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.order is not None:
            state["order"] = self.order
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.order = state.get("order")


#: ``train_ordering(bank, out, config, *, val_bank=None, resume=False, progress=True, time_limit_minutes=None)``:
#: the pairwise network on ``bank``'s rule-labelled pairs into the run directory ``out``
#: (:class:`~synthesis.training.harness.BankTraining`). Every checkpoint also holds the class-prior
#: baseline fitted on the same pairs (``class_prior.json``). The learning rate decays over whichever
#: of steps and time runs out first.
train_ordering = BankTraining("ordering", OrderingRunConfig, OrderingTrainer)


def _head(pairs: PairSet, n: int) -> PairSet:
    """The first ``n`` pairs."""
    n = min(n, len(pairs))
    return PairSet(
        pairs.masks[:n],
        pairs.layout[:n],
        pairs.windows[:n],
        pairs.classes[:n],
        pairs.y[:n],
        pairs.image[:n],
        pairs.index[:n],
        pairs.frame,
    )


def benchmark_ordering(
    train: Bank, val: Bank, weights: str | Path, progress: bool = True, limit: int | None = None
) -> dict[str, Any]:
    """Accuracy of the network and of the class prior (from ``weights/class_prior.json``) on ``val``'s pairs
    (of its first ``limit`` images), overall and by kind of pair, plus how often whole paint orders respect
    the pair labels."""
    del train  # the prior comes with the weights; kept for a uniform benchmark signature
    model = OrderingNet.from_pretrained(weights)
    config = model.config
    prior = ClassPrior.load(weights)
    names = val.classes.names
    tiers = DepthTiers.from_class_names(names)
    pairs = build_pairs(val, config, tiers, progress, limit)
    n_images = val.num_images if limit is None else min(limit, val.num_images)
    start = time.perf_counter()
    p_net = predict(model, pairs, config)
    net_ms = 1000 * (time.perf_counter() - start) / max(len(pairs), 1)
    ca, cb = pairs.classes[:, 0].numpy(), pairs.classes[:, 1].numpy()
    p_prior = prior.predict(ca, cb)
    y = pairs.y.numpy()
    ta = np.array([tiers.tier(int(c)) for c in ca])
    tb = np.array([tiers.tier(int(c)) for c in cb])
    kinds = {
        "all": np.ones(len(y), bool),
        "different_tier": ta != tb,
        "same_tier_different_class": (ta == tb) & (ca != cb),
        "same_class": ca == cb,
    }
    by_kind = {
        k: {
            "pairs": int(sel.sum()),
            "network": round(accuracy(p_net[sel], y[sel]), 4),
            "class_prior": round(accuracy(p_prior[sel], y[sel]), 4),
        }
        for k, sel in kinds.items()
    }
    # Whole orders: for each val layout, the paint order of its segments, scored on that layout's pairs.
    orderer = LearnedOrderer(model, config)
    agree = {"network": 0, "class_prior": 0, "rule_paint_order": 0}
    start = time.perf_counter()
    order_s = 0.0
    for i in tqdm(range(n_images), disable=not progress, desc="orders"):
        sel = pairs.image == i
        if not sel.any():
            continue
        masks, classes, layout, _, _, _ = image_pairs(val, i, config, tiers)
        t0 = time.perf_counter()
        orders = {"network": orderer(layout, masks, classes.tolist())}
        order_s += time.perf_counter() - t0
        orders["class_prior"] = prior(layout, masks, classes.tolist())
        orders["rule_paint_order"] = paint_order(masks, classes.tolist(), layout, tiers)
        for name, order in orders.items():
            rank = np.empty(len(order), np.int64)
            rank[order] = np.arange(len(order))
            a, b = pairs.index[sel, 0], pairs.index[sel, 1]
            agree[name] += int(((rank[a] > rank[b]) == (y[sel] > 0.5)).sum())
    return {
        "what": "ordering accuracy on CamVid val neighbour pairs, labelled by synthesis.canvas.order_rule.pair_order",
        "weights": str(weights),
        "val_pairs": len(pairs),
        "undecided_pairs_left_out": pairs.undecided,
        "pairwise_accuracy": {"network": by_kind["all"]["network"], "class_prior": by_kind["all"]["class_prior"]},
        "by_kind": by_kind,
        "paint_order_agreement": {k: round(v / max(len(pairs), 1), 4) for k, v in agree.items()},
        "class_prior_order_back_to_front": [names[c] for c in np.argsort(prior.score, kind="stable")],
        "network_ms_per_pair": round(net_ms, 3),
        "val_images": n_images,
        "orderer_ms_per_layout": round(1000 * order_s / max(n_images, 1), 1),
    }
