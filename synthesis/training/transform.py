"""Training of the transformation network T (paper §4.3) on perturbed bank segments.

Each example is a real bank segment. It is cut (with some probability a sub-box of it is kept) and moved by
a random affine transform; T sees the layout, the original segment's mask as the target and the perturbed
pixels, and must undo the move. The loss is L1 on colour between the segment T produces and the unperturbed
one, plus ``mask_weight`` times L1 on the mask (the mask term carries the shape where colours are dark or
flat). Everything is sampled straight from the full-resolution frames through composed transforms, so no
perturbed frame is ever materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)

from memory_bank import Bank
from memory_bank.images import resize_photo
from synthesis.configs import JsonConfig
from synthesis.networks.geometry import compose, identity_theta, sample, window_boxes, window_theta
from synthesis.networks.transform import TransformConfig, TransformNet, window_inputs
from synthesis.training.harness import BankTraining, OptimizerTrainer, Progress, ScheduledSettings, TrainResult
from synthesis.training.optim import adamw, optimizer_step, set_lr, warmup_cosine_by_progress


@dataclass(frozen=True)
class PerturbConfig:
    """Ranges of the random perturbations (uniform in each range).

    Attributes:
        max_rotation: degrees, either way.
        max_log_scale: natural log of the largest scale change, either way.
        max_log_aspect: natural log of the largest change of aspect ratio, either way.
        max_shift: largest shift, as a fraction of the segment's box height/width, either way.
        cut_probability: chance that only a random sub-box of the segment is kept.
        min_keep: the kept sub-box spans at least this fraction of the box in each dimension.
    """

    max_rotation: float = 10.0
    max_log_scale: float = 0.3
    max_log_aspect: float = 0.15
    max_shift: float = 0.3
    cut_probability: float = 0.3
    min_keep: float = 0.6


@dataclass(frozen=True)
class TransformTrainConfig(ScheduledSettings):
    """Hyper-parameters of ``sims train transform`` (the ``train`` section of ``configs/transform/*.json``)."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    min_area: int = 256
    mask_weight: float = 1.0
    loss_supersample: int = 2
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    val_samples: int = 256
    log_every: int = 50
    checkpoint_every: int = 250

    @property
    def eval_every(self) -> int:
        """The harness's cadence: the fixed val examples are scored at every checkpoint."""
        return self.checkpoint_every


@dataclass(frozen=True)
class TransformRunConfig(JsonConfig):
    """A run of ``sims train transform``: ``{"model": {...}, "train": {...}}`` (``configs/transform/``)."""

    model: TransformConfig = field(default_factory=TransformConfig)
    train: TransformTrainConfig = field(default_factory=TransformTrainConfig)


class FrameStore:
    """A bank's photos, labels and component maps held in memory, and its segments big enough to train on.

    Photos and labels are kept at the bank's resolution divided by ``scale`` (area and nearest
    resampling); masks are cut from the full-resolution component maps and then average-pooled, so they
    keep partial coverage. Geometry (boxes, ``frame``) stays in full-resolution pixels: every sampling
    grid is in normalised coordinates, so the stored size only sets the detail.
    """

    def __init__(self, bank: Bank, min_area: int, scale: int = 1) -> None:
        self.frame = bank.resolution
        self.scale = scale
        h, w = self.frame
        size = (-(-h // scale), -(-w // scale))
        photos = np.asarray(bank.photos[:])
        if scale > 1:
            photos = np.stack([resize_photo(p, size) for p in photos])
        self.photos = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()  # (N, 3, h, w) uint8
        self.labels = torch.from_numpy(np.ascontiguousarray(np.asarray(bank.labels[:])[:, ::scale, ::scale]))
        self.components = torch.from_numpy(np.asarray(bank.components[:]).astype(np.int16))
        area = bank.column("area")
        self.ids = np.flatnonzero(area >= min_area)
        if self.ids.size == 0:
            raise ValueError(f"the bank has no segment of at least {min_area} px to train on")
        self.image_id = bank.column("image_id").astype(np.int64)
        self.local_index = bank.column("local_index").astype(np.int64)
        self.bbox = bank.column("bbox").astype(np.float32)

    def batch(self, segment_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Labels (B, h, w) uint8, masks (B, 1, h, w) float coverage, pixels (B, 3, h, w) float in [0, 1]
        (premultiplied by the coverage), boxes (B, 4) float ``[y0, x0, y1, x1)`` in full-resolution pixels."""
        img = torch.from_numpy(self.image_id[segment_ids])
        local = torch.from_numpy(self.local_index[segment_ids] + 1).view(-1, 1, 1)
        mask = (self.components[img] == local).unsqueeze(1).float()
        if self.scale > 1:
            mask = F.avg_pool2d(mask, self.scale, ceil_mode=True)
        pixels = self.photos[img].float() / 255.0 * mask
        return self.labels[img], mask, pixels, torch.from_numpy(self.bbox[segment_ids])


def random_perturbation(
    boxes: torch.Tensor, frame: tuple[int, int], cfg: PerturbConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random moves of segments with (B, 4) boxes.

    Returns ``(theta, moved_boxes)``: (B, 2, 3) frame-coordinate sampling transforms (perturbed frame ->
    original frame, as :func:`apply_affine` takes them) and the (B, 4) boxes of the moved boxes' corners.
    """
    b = boxes.shape[0]
    fh, fw = frame

    def u(scale: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) * 2 - 1) * scale

    angle = u(math.radians(cfg.max_rotation))
    log_s, log_a = u(cfg.max_log_scale), u(cfg.max_log_aspect)
    sy, sx = torch.exp(log_s + log_a / 2), torch.exp(log_s - log_a / 2)
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    ty = u(cfg.max_shift) * (boxes[:, 2] - boxes[:, 0])
    tx = u(cfg.max_shift) * (boxes[:, 3] - boxes[:, 1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward map in pixel (x, y) coordinates: p' = c + R S (p - c) + t.
    lin = torch.stack([torch.stack([cos * sx, -sin * sy], 1), torch.stack([sin * sx, cos * sy], 1)], 1)
    c = torch.stack([cx, cy], 1)
    off = c + torch.stack([tx, ty], 1) - (lin @ c.unsqueeze(2)).squeeze(2)
    fwd = torch.cat([lin, off.unsqueeze(2)], 2)
    # To normalised coordinates (x_n = 2 x / W - 1), then invert: grid_sample wants output -> input.
    n = torch.tensor([[2.0 / fw, 0.0, -1.0], [0.0, 2.0 / fh, -1.0]]).expand(b, 2, 3)
    n_inv = torch.tensor([[fw / 2.0, 0.0, fw / 2.0], [0.0, fh / 2.0, fh / 2.0]]).expand(b, 2, 3)
    fwd_n = compose(n, fwd, n_inv)
    theta = torch.linalg.inv(torch.cat([fwd_n, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(b, 1, 3)], 1))[:, :2]
    corners = torch.stack(
        [
            torch.stack([boxes[:, 1], boxes[:, 0]], 1),
            torch.stack([boxes[:, 3], boxes[:, 0]], 1),
            torch.stack([boxes[:, 1], boxes[:, 2]], 1),
            torch.stack([boxes[:, 3], boxes[:, 2]], 1),
        ],
        2,
    )  # (B, 2 (x, y), 4)
    moved = lin @ corners + off.unsqueeze(2)
    lo, hi = moved.min(2).values, moved.max(2).values
    return theta, torch.stack([lo[:, 1], lo[:, 0], hi[:, 1], hi[:, 0]], 1)


def random_cut(
    mask: torch.Tensor,
    pixels: torch.Tensor,
    boxes: torch.Tensor,
    cfg: PerturbConfig,
    gen: torch.Generator,
    scale: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random sub-box of some segments (``cut_probability``); returns mask, pixels and kept boxes.

    ``boxes`` are in full-resolution pixels, the (B, ., h, w) frames reduced by ``scale``.
    """
    b, _, h, w = mask.shape
    cut = torch.rand(b, generator=gen) < cfg.cut_probability
    size = boxes[:, 2:] - boxes[:, :2]
    keep = cfg.min_keep + (1 - cfg.min_keep) * torch.rand(b, 2, generator=gen)
    start = boxes[:, :2] + (size - size * keep) * torch.rand(b, 2, generator=gen)
    lo = torch.where(cut.unsqueeze(1), start.floor(), boxes[:, :2])
    hi = torch.where(cut.unsqueeze(1), (start + size * keep).ceil(), boxes[:, 2:])
    ys = ((torch.arange(h) + 0.5) * scale).view(1, h, 1)  # pixel centres in full-resolution pixels
    xs = ((torch.arange(w) + 0.5) * scale).view(1, 1, w)
    inside = (ys >= lo[:, 0, None, None]) & (ys < hi[:, 0, None, None])
    inside = inside & (xs >= lo[:, 1, None, None]) & (xs < hi[:, 1, None, None])
    kept = mask * inside.unsqueeze(1)
    # A cut that leaves nothing (a sub-box in a hole of the mask) is undone.
    empty = kept.flatten(1).sum(1) == 0
    kept = torch.where(empty.view(b, 1, 1, 1), mask, kept)
    new_boxes = torch.where(empty.unsqueeze(1), boxes, torch.cat([lo, hi], 1))
    return kept, pixels * kept, new_boxes


@dataclass
class Batch:
    """One training batch: network inputs, and what the loss compares."""

    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    frames: torch.Tensor  # (B, 4, H, W): cut pixels and mask in the original frame
    g: torch.Tensor  # window -> frame
    theta_p: torch.Tensor  # perturbed frame -> original frame


def make_batch(
    store: FrameStore, ids: np.ndarray, model_cfg: TransformConfig, cfg: TransformTrainConfig, gen: torch.Generator
) -> Batch:
    """Cut, perturb and window a batch of segments."""
    labels, mask, pixels, boxes = store.batch(ids)
    cut_mask, cut_pixels, cut_boxes = random_cut(mask, pixels, boxes, cfg.perturb, gen, store.scale)
    theta_p, moved_boxes = random_perturbation(cut_boxes, store.frame, cfg.perturb, gen)
    g = window_theta(window_boxes(boxes, moved_boxes, model_cfg), store.frame)
    inputs = window_inputs(labels, mask, cut_pixels, cut_mask, g, compose(theta_p, g), model_cfg)
    return Batch(inputs, torch.cat([cut_pixels, cut_mask], 1), g, theta_p)


def batch_loss(
    theta_w: torch.Tensor, batch: Batch, model_cfg: TransformConfig, cfg: TransformTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 colour + ``mask_weight`` * L1 mask between T's result and the unperturbed segment, in the window.

    T's result, seen through the window, samples the cut frame at ``theta_p G theta_w``; the unperturbed segment
    samples it at ``G``.
    """
    size, ss = model_cfg.input_size, cfg.loss_supersample
    pred = sample(batch.frames, compose(batch.theta_p, batch.g, theta_w), size, ss)
    with torch.no_grad():
        target = sample(batch.frames, batch.g, size, ss)
    colour = (pred[:, :3] - target[:, :3]).abs().mean()
    shape = (pred[:, 3:] - target[:, 3:]).abs().mean()
    loss = colour + cfg.mask_weight * shape
    return loss, {"loss": loss.item(), "colour": colour.item(), "mask": shape.item()}


@torch.no_grad()
def window_iou(theta_w: torch.Tensor, batch: Batch, model_cfg: TransformConfig) -> torch.Tensor:
    """Per-example IoU (B,) of the thresholded result mask with the unperturbed one, in the window."""
    size = model_cfg.input_size
    pred = sample(batch.frames[:, 3:], compose(batch.theta_p, batch.g, theta_w), size, 2) >= 0.5
    target = sample(batch.frames[:, 3:], batch.g, size, 2) >= 0.5
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


@dataclass
class ValSet:
    """A fixed set of perturbed examples, in batches."""

    batches: list[Batch]

    @classmethod
    def build(cls, store: FrameStore, model_cfg: TransformConfig, cfg: TransformTrainConfig, seed: int) -> ValSet:
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        ids = rng.choice(store.ids, size=min(cfg.val_samples, store.ids.size), replace=False)
        return cls([make_batch(store, ids[i : i + 32], model_cfg, cfg, gen) for i in range(0, ids.size, 32)])

    @torch.no_grad()
    def evaluate(self, model: TransformNet, model_cfg: TransformConfig, cfg: TransformTrainConfig) -> dict[str, float]:
        """Mean loss, and mean window IoU without T (perturbed) and with T."""
        model.eval()
        losses, before, after = [], [], []
        for b in self.batches:
            theta_w = model(*b.inputs)
            losses.append(batch_loss(theta_w, b, model_cfg, cfg)[1]["loss"])
            before.append(window_iou(identity_theta(theta_w.shape[0]), b, model_cfg))
            after.append(window_iou(theta_w, b, model_cfg))
        model.train()
        return {
            "val_loss": float(np.mean(losses)),
            "val_iou_perturbed": float(torch.cat(before).mean()),
            "val_iou_t": float(torch.cat(after).mean()),
        }


class TransformTrainer(OptimizerTrainer):
    """T, its optimizer and its data: perturbed segments of one bank, scored on fixed perturbed val examples."""

    scores_file = "train_summary.json"

    def __init__(self, bank: Bank, config: TransformRunConfig, val_bank: Bank | None, progress: bool) -> None:
        model_cfg, cfg = config.model, config.train
        if len(bank.classes.names) != model_cfg.num_classes:
            raise ValueError(f"model has {model_cfg.num_classes} classes, the bank {len(bank.classes.names)}")
        self.model_cfg, self.cfg = model_cfg, cfg
        self.store = FrameStore(bank, cfg.min_area, model_cfg.work_scale)
        val_store = FrameStore(val_bank, cfg.min_area, model_cfg.work_scale) if val_bank else self.store
        self.val = ValSet.build(val_store, model_cfg, cfg, cfg.seed + 1)
        self.model = TransformNet.from_config(model_cfg)
        self.optimizer = adamw(self.model, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

    def training_step(self, progress: Progress) -> float:
        # Warm-up, then cosine decay over the run's progress (by steps or by time, whichever is further).
        set_lr(self.optimizer, warmup_cosine_by_progress(self.cfg.lr, progress.fraction))
        self.model.train()
        ids = self.rng.choice(self.store.ids, size=self.cfg.batch_size)
        batch = make_batch(self.store, ids, self.model_cfg, self.cfg, self.generator)
        loss, _ = batch_loss(self.model(*batch.inputs), batch, self.model_cfg, self.cfg)
        return optimizer_step(self.optimizer, loss, max_grad_norm=1.0)

    def evaluate(self) -> dict[str, float]:
        return self.val.evaluate(self.model, self.model_cfg, self.cfg)

    def finish(self, result: TrainResult, progress: bool) -> TrainResult:
        """The final val scores (``train_summary.json``): mean loss, window IoU without and with T."""
        s = self.evaluate()
        line = (
            f"trained to step {result.step} in {result.seconds / 60:.1f} min; perturbed val IoU "
            f"{s['val_iou_perturbed']:.4f} -> {s['val_iou_t']:.4f} with T; run in {result.out_dir}"
        )
        return result.summarised(s, [line])


#: ``train_transform(bank, out, config, *, val_bank=None, resume=False, progress=True, time_limit_minutes=None)``:
#: T on ``bank`` into the run directory ``out`` (:class:`~synthesis.training.harness.BankTraining`).
#: ``val_bank`` (else ``bank``) gives the fixed perturbed examples scored at every checkpoint. The
#: learning rate decays over whichever of steps and time runs out first, so a time-limited run still
#: ends annealed.
train_transform = BankTraining("transform", TransformRunConfig, TransformTrainer)
