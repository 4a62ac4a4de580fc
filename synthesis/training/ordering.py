"""Training and evaluation of the ordering network (paper §4.4) on pairs labelled by the layout rule.

CamVid has no depth, so every pair of neighbouring segments of a layout (overlapping or within
``adjacency`` px) is labelled by :func:`synthesis.canvas.order_rule.pair_order` (tiers, containment,
lower-in-frame-is-nearer); pairs the rule cannot decide are left out. The network learns that rule from
masks and layout windows; the class-prior baseline learns only a fixed order of classes from the same
pairs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from tqdm import tqdm

from memory_bank import IGNORE, Bank
from synthesis.canvas.order_rule import DepthTiers, paint_order, pair_order
from synthesis.networks.ordering import (
    ClassPrior,
    LearnedOrderer,
    OrderingConfig,
    OrderingNet,
    PairInputs,
    boxes_of,
    load_pretrained,
    neighbour_pairs,
    pair_windows,
    reduce_components,
    sample_pairs,
    save_pretrained,
    window_coords,
)
from synthesis.training.transform import learning_rate

log = logging.getLogger(__name__)

RESUME_NAME = "resume.pt"


@dataclass(frozen=True)
class OrderingTrainConfig:
    """Hyper-parameters of ``sims train ordering`` (``configs/ordering/*.json``, key ``training``)."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    flip: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrderingTrainConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def load_run_config(path: str | Path) -> tuple[OrderingConfig, OrderingTrainConfig]:
    """Read a ``{"model": {...}, "training": {...}}`` run config."""
    d = json.loads(Path(path).read_text())
    return OrderingConfig.from_dict(d.get("model", {})), OrderingTrainConfig.from_dict(d.get("training", {}))


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
        lab = self.layout[idx].long()
        onehot = F.one_hot(lab.clamp(max=num_classes), num_classes + 1)[..., :num_classes]
        onehot = onehot.permute(0, 3, 1, 2).float()
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
        parts["windows"].append(pair_windows(boxes[pair_t[:, 0]], boxes[pair_t[:, 1]], config))
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


def train_ordering(
    bank: Bank,
    out: str | Path,
    config: OrderingConfig,
    cfg: OrderingTrainConfig,
    val_bank: Bank | None = None,
    progress: bool = True,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train the pairwise network on ``bank``'s rule-labelled pairs, fit the class prior on them too.

    Writes into ``out``: ``config.json`` + ``model.safetensors`` (float16) and ``class_prior.json`` after each
    epoch, ``train_log.jsonl``, ``resume.pt`` (a run there resumes at its next epoch) and ``train_summary.json``.
    ``time_limit`` (minutes, pair extraction included) stops after the epoch that crosses it; the learning
    rate decays over whichever of steps and time runs out first.
    """
    names = bank.classes.names
    if len(names) != config.num_classes:
        raise ValueError(f"model has {config.num_classes} classes, the bank {len(names)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tiers = DepthTiers.from_class_names(names)
    start = time.perf_counter()
    train = build_pairs(bank, config, tiers, progress)
    val = build_pairs(val_bank, config, tiers, progress) if val_bank is not None else None
    log.info("pairs: %d train (%d undecided left out), %d val", len(train), train.undecided, len(val) if val else 0)
    prior = ClassPrior.fit(train.classes[:, 0].numpy(), train.classes[:, 1].numpy(), train.y.numpy(), len(names))
    prior.save(out, names)
    model = OrderingNet.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    epoch = 0
    resume_path = out / RESUME_NAME
    if resume_path.is_file():
        state = torch.load(resume_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        epoch = state["epoch"]
        log.info("resumed after epoch %d", epoch)
    log_file = (out / "train_log.jsonl").open("a")
    record: dict[str, Any] = {}
    while epoch < cfg.epochs:
        if time_limit is not None and time.perf_counter() - start > time_limit * 60:
            log.info("time limit of %.1f min reached after epoch %d", time_limit, epoch)
            break
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        losses = []
        for s in tqdm(range(0, len(train), cfg.batch_size), disable=not progress, desc=f"epoch {epoch + 1}"):
            done = (epoch * steps_per_epoch + s // cfg.batch_size) / total
            if time_limit is not None:  # decay over whichever runs out first, steps or time
                done = max(done, (time.perf_counter() - start) / (time_limit * 60))
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg.lr, done)
            idx = perm[s : s + cfg.batch_size]
            inputs = train.inputs(idx, config.num_classes, config.input_size)
            y = train.y[idx]
            if cfg.flip and torch.rand((), generator=gen) < 0.5:
                inputs = inputs.flipped()
            loss = F.binary_cross_entropy_with_logits(model(*inputs.as_args()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch += 1
        record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        head = _head(train, 4000)  # a cheap train-accuracy estimate
        record["train_accuracy"] = accuracy(predict(model, head, config), head.y.numpy())
        if val is not None:
            record["val_accuracy"] = accuracy(predict(model, val, config), val.y.numpy())
            record["val_class_prior"] = accuracy(
                prior.predict(val.classes[:, 0].numpy(), val.classes[:, 1].numpy()), val.y.numpy()
            )
        record["wall_s"] = round(time.perf_counter() - start, 1)
        log.info("epoch %d: %s", epoch, record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "epoch": epoch}
        torch.save(state, resume_path.with_suffix(".tmp"))
        resume_path.with_suffix(".tmp").replace(resume_path)
        save_pretrained(out, config, model)
    log_file.close()
    summary = {"epochs": epoch, "train_pairs": len(train), "val_pairs": len(val) if val else 0, **record}
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
    config, model = load_pretrained(weights)
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
