"""Training the synthesis network (``sims train synthesis``), SIMS or parametric baseline.

The run directory, resume, checkpoints and time limit are the harness's
(:mod:`synthesis.training.harness`); sample grids show layout | canvas | output | photo.

The parametric baseline (CRN-style) is the same network, budget and data with the canvas always
empty (all zeros, every pixel missing); the checkpoint records which of the two a run trained.
The network is the one its ``model`` section describes: the SIMS network
(:class:`~synthesis.networks.refinement.RefinementConfig`) or the SPADE-class peer
(:class:`~synthesis.networks.spade.SpadeConfig`, trained ``parametric``), with the same losses,
discriminator and data.
Resuming restores weights, optimizer, RNG states and the position in the data, so a resumed run
takes exactly the steps an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

from memory_bank.classes import default_palette
from synthesis.adversarial import AdversarialConfig, MultiscaleDiscriminator, feature_matching_loss, lsgan_loss
from synthesis.configs import JsonConfig
from synthesis.losses import CRN_LAYER_WEIGHTS, PerceptualLoss
from synthesis.model_directory import from_pretrained, network_for_config, read_metadata
from synthesis.networks.blend import BlendedImage, blend_canvas, refine_holes
from synthesis.networks.refinement import RefinementConfig
from synthesis.networks.spade import SpadeConfig
from synthesis.networks.vgg import VggIdentity, VggSpec, load_vgg
from synthesis.tensors import image_array, one_hot
from synthesis.training.data import DataConfig, build_dataset, check_sample, collate, empty_canvas
from synthesis.training.harness import Progress, ScheduledSettings, Trainer, TrainResult, train_network
from synthesis.training.optim import optimizer_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings(ScheduledSettings):
    """Optimisation and bookkeeping settings.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this count).
        batch_size: samples per step.
        lr, betas: Adam's.
        seed: seeds weights, data order and every RNG.
        threads: torch CPU threads (None: torch's default).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        precision: ``fp32``, or ``bf16`` autocast (fast on CPUs with AMX/AVX512-BF16; weights stay float32).
        channels_last: NHWC memory format, which oneDNN convolutions prefer on CPU.
        checkpoint_every, sample_every, log_every: in steps.
        keep_checkpoints: how many recent checkpoints to keep.
        sample_count: samples in each grid.
        blend_lr_scale: learning-rate multiplier of the canvas blend head: a 1x1 layer whose bias
            alone moves the blend weight, too slowly at the network's own rate.
    """

    steps: int = 10_000
    batch_size: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 50
    sample_count: int = 4
    blend_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr > 0 (got {self.steps}, {self.batch_size}, {self.lr})"
            )
        if min(self.checkpoint_every, self.sample_every, self.log_every, self.keep_checkpoints) < 1:
            raise ValueError("checkpoint_every, sample_every, log_every and keep_checkpoints must be >= 1")
        if self.blend_lr_scale <= 0:
            raise ValueError(f"blend_lr_scale must be > 0, got {self.blend_lr_scale}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class FullResolutionLoss:
    """The perceptual loss of the full-resolution output (the canvas blend), on random crops.

    Attributes:
        weight: its weight next to the network-resolution loss.
        crop: (rows, cols) of the window the loss sees, at the output resolution; one window per
            step, drawn from torch's seeded generator (so a resumed run draws the same windows).
    """

    weight: float = 1.0
    crop: tuple[int, int] = (192, 256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", (int(self.crop[0]), int(self.crop[1])))
        if self.weight < 0 or min(self.crop) < 32:
            raise ValueError(f"full_loss needs weight >= 0 and a crop of >= 32x32, got {self.weight}, {self.crop}")


@dataclass(frozen=True)
class TrainSynthesisConfig(JsonConfig):
    """Everything one training run needs; saved with every checkpoint.

    ``model`` is the network, ``vgg`` the loss network, ``loss_weights`` the perceptual loss's
    layer weights, ``data`` the samples, ``train`` the optimisation; ``parametric`` trains the
    CRN-style baseline (empty canvas) instead of SIMS. ``full_loss`` adds the loss of the
    full-resolution output (needs samples with the full-resolution keys); ``init_from`` names a
    model directory whose weights a fresh run starts from (layers it lacks keep their init);
    ``adversarial`` adds a multi-scale patch discriminator with feature matching on the
    full-resolution crops (:mod:`synthesis.adversarial`).
    """

    model: RefinementConfig | SpadeConfig
    vgg: VggSpec = field(default_factory=VggSpec)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    loss_weights: Mapping[str, float] = field(default_factory=lambda: dict(CRN_LAYER_WEIGHTS))
    parametric: bool = False
    full_loss: FullResolutionLoss | None = None
    init_from: str | None = None
    adversarial: AdversarialConfig | None = None


@dataclass(frozen=True)
class SynthesisTrainResult(TrainResult):
    """What :func:`train_synthesis` did: the harness's :class:`TrainResult` plus the loss's VGG."""

    vgg: VggIdentity | None = None

    @property
    def seconds_per_step(self) -> float:
        """Seconds per step of this part of the run."""
        return self.seconds_this_run / max(1, self.steps_run)


class EpochSampler:
    """Shuffled indices, epoch after epoch, from ``(seed, epoch)``: its whole state is two integers."""

    def __init__(self, size: int, seed: int, epoch: int = 0, cursor: int = 0) -> None:
        if size < 1:
            raise ValueError("the training dataset is empty")
        self.size, self.seed, self.epoch, self.cursor = size, seed, epoch, cursor
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next_indices(self, n: int, on_epoch: Callable[[int], None] | None = None) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
                if on_epoch is not None:
                    on_epoch(self.epoch)
            out.append(self._order[self.cursor])
            self.cursor += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present (unverified here), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def sample_grid(batch: Mapping[str, torch.Tensor], output: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """Rows of ``layout colours | canvas | output | photo`` as one (rows*H, 4*W, 3) uint8 image."""

    rows = []
    for i in range(output.shape[0]):
        layout = palette[batch["layout"][i].cpu().numpy().clip(0, 255).astype(np.uint8)]
        images = [image_array(t[i].float()) for t in (batch["canvas"], output, batch["photo"])]
        rows.append(np.concatenate([layout, *images], axis=1))
    return np.concatenate(rows, axis=0)


def _palette(dataset: Dataset, num_classes: int) -> np.ndarray:
    palette = getattr(dataset, "palette", None)
    if palette is not None:
        return np.asarray(palette, dtype=np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[:num_classes] = default_palette(num_classes)
    return lut


class SynthesisTrainer(Trainer):
    """The pieces of a run (network, loss, optimizer, data) and one step of training.

    :func:`train_synthesis` runs it with the harness; tests use it directly for single steps.
    """

    def __init__(self, config: TrainSynthesisConfig, dataset: Dataset) -> None:
        self.config = config
        t = config.train
        self.device = resolve_device(t.device)
        torch.manual_seed(t.seed)
        self.model = network_for_config(type(config.model)).network.from_config(config.model).to(self.device)
        layers = [name for name in config.loss_weights if name != "input"]
        vgg, self.vgg_identity = load_vgg(config.vgg, layers)
        self.loss_fn = PerceptualLoss(vgg, config.loss_weights).to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.loss_fn.to(memory_format=torch.channels_last)
        if t.precision == "bf16":
            # The VGG is frozen: cast it once rather than letting autocast re-cast its weights every step.
            self.loss_fn.vgg.to(torch.bfloat16)
        to_blend = getattr(self.model, "to_blend", None)
        head = [] if to_blend is None else list(to_blend.parameters())
        rest = [p for p in self.model.parameters() if all(p is not q for q in head)]
        groups = [{"params": rest}] + ([{"params": head, "lr": t.lr * t.blend_lr_scale}] if head else [])
        self.optimizer = torch.optim.Adam(groups, lr=t.lr, betas=t.betas)
        self.discriminator: MultiscaleDiscriminator | None = None
        adv = config.adversarial
        if adv is not None:
            if config.full_loss is None:
                raise ValueError("adversarial training judges the full-resolution crops: it needs full_loss")
            in_ch = 3 + config.model.num_classes
            self.discriminator = MultiscaleDiscriminator(in_ch, adv.scales, adv.width, adv.layers).to(self.device)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=adv.lr, betas=(0.5, 0.999))
        # The discriminator's inputs of the last generator step: (fake crop, real crop), detached.
        self._judged: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dataset = dataset
        self.step = 0
        self.loss_history: list[float] = []
        self.sampler = EpochSampler(len(dataset), t.seed)  # type: ignore[arg-type]
        #: The fixed batch of the sample grids (None: no grids).
        self.sample_batch: Mapping[str, torch.Tensor] | None = None
        self._sync_epoch()

    def _sync_epoch(self) -> None:
        # Datasets that redraw per epoch must start where the sampler is, whatever they did before.
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.sampler.epoch)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move a batch to the device, emptying the canvas for the parametric baseline."""
        if self.config.parametric:
            batch = empty_canvas(batch)
        fmt = torch.channels_last if self.config.train.channels_last else torch.contiguous_format
        return {
            k: v.to(self.device, non_blocking=True)
            if v.ndim != 4
            else v.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            for k, v in batch.items()
        }

    def generate(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The network's output for a device batch, in float32."""
        return self.forward(batch)[0]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, BlendedImage | None]:
        """The network-resolution output (float32) and, for full-resolution batches, the blended output."""
        with self._autocast():
            rgb, raw = self.model.forward_with_blend(batch["layout"], batch["canvas"], batch["missing"])
        rgb = rgb.float()
        if "full_canvas" not in batch:
            return rgb, None
        return rgb, blend_canvas(rgb, None if raw is None else raw.float(), batch["full_canvas"], batch["full_kept"])

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The perceptual loss of the network on a device batch (no optimizer step).

        With ``full_loss``, the full-resolution output adds its loss on one random crop; the
        network's hole refiner, if it has one, runs on that crop (it is fully convolutional).
        """
        out, blended = self.forward(batch)
        with self._autocast():
            loss = self.loss_fn(out, batch["photo"]).float()
        full = self.config.full_loss
        if full is not None and full.weight > 0:
            if blended is None:
                raise ValueError("full_loss needs samples with full_canvas/full_kept/full_photo (data.options)")
            full_layout = self.full_layout(batch, tuple(blended.image.shape[-2:]))
            judged = (blended.image, batch["full_photo"], blended.weight, full_layout)
            image, target, weight, layout = random_crop(judged, full.crop)
            condition = one_hot(layout, self.config.model.num_classes)
            with self._autocast():
                image = refine_holes(self.model, image, weight, condition).float()
                loss = loss + full.weight * self.loss_fn(image, target).float()
            if self.discriminator is not None and self.config.adversarial is not None:
                loss = loss + self._generator_adversarial_loss(
                    self.discriminator, self.config.adversarial, image, target, condition
                )
        return loss

    @staticmethod
    def full_layout(batch: Mapping[str, torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """The layout at the output resolution: the sample's own, else the network's resized."""
        if "full_layout" in batch:
            return batch["full_layout"]
        return resize_layout(batch["layout"], size)

    def _generator_adversarial_loss(
        self,
        discriminator: MultiscaleDiscriminator,
        adv: AdversarialConfig,
        image: torch.Tensor,
        target: torch.Tensor,
        condition: torch.Tensor,
    ) -> torch.Tensor:
        """LSGAN and feature matching terms for the generator; keeps the crops for the discriminator's step."""
        fake_in = torch.cat([image, condition], dim=1)
        real_in = torch.cat([target, condition], dim=1)
        self._judged = (fake_in.detach(), real_in.detach())
        fake = discriminator(fake_in)
        with torch.no_grad():
            real = discriminator(real_in)
        return adv.weight * lsgan_loss(fake, real=True) + adv.feature_matching * feature_matching_loss(fake, real)

    def _discriminator_step(self, discriminator: MultiscaleDiscriminator) -> float:
        """One Adam step of the discriminator on the last generator step's crops."""
        if self._judged is None:
            raise RuntimeError("the discriminator steps after a generator step that judged crops")
        fake_in, real_in = self._judged
        loss = 0.5 * (lsgan_loss(discriminator(real_in), real=True) + lsgan_loss(discriminator(fake_in), real=False))
        self._judged = None
        return optimizer_step(self.d_optimizer, loss)

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> float:
        """One Adam step on a CPU or device batch; returns the loss before the step."""
        self.model.train()
        batch = self.to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower train.lr or use fp32")
        loss.backward()
        self.optimizer.step()
        if self.discriminator is not None:
            self._discriminator_step(self.discriminator)
        self.step += 1
        value = float(loss.item())
        self.loss_history.append(value)
        return value

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next training batch in the seeded order (calls ``dataset.set_epoch`` at epoch changes)."""
        on_epoch = getattr(self.dataset, "set_epoch", None)
        indices = self.sampler.next_indices(self.config.train.batch_size, on_epoch)
        return collate([self.dataset[i] for i in indices])

    @torch.no_grad()
    def render_samples(self, batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        """A sample grid for a fixed batch, in eval mode (at the output resolution when it has one)."""
        self.model.eval()
        device_batch = self.to_device(batch)
        out, blended = self.forward(device_batch)
        palette = _palette(self.dataset, self.config.model.num_classes)
        if blended is None:
            self.model.train()
            return sample_grid(device_batch, out, palette)
        layout = self.full_layout(device_batch, tuple(blended.image.shape[-2:]))
        image = refine_holes(self.model, blended.image, blended.weight, one_hot(layout, self.config.model.num_classes))
        self.model.train()
        full = {"layout": layout, "canvas": device_batch["full_canvas"], "photo": device_batch["full_photo"]}
        return sample_grid(full, image, palette)

    # The harness's hooks (synthesis.training.harness)
    def finish(self, result: TrainResult, progress: bool) -> SynthesisTrainResult:
        """The result with the loss's VGG and one summary line: mode, steps, speed, last loss, checkpoint."""
        r = SynthesisTrainResult(**{f.name: getattr(result, f.name) for f in fields(result)}, vgg=self.vgg_identity)
        line = (
            f"{network_label(self.config)}: step {r.step} "
            f"({r.steps_run} this run, {r.seconds_per_step:.2f} s/step), "
            f"loss {f'{r.losses[-1]:.4f}' if r.losses else 'n/a'}; checkpoint {r.checkpoint}"
        )
        return replace(r, lines=(line,))

    def training_step(self, progress: Progress) -> float:
        """One step on the next batch of the seeded order."""
        return self.train_step(self.next_batch())

    def samples(self) -> np.ndarray | None:
        """The sample grid of the fixed batch :func:`train_synthesis` sets."""
        return None if self.sample_batch is None else self.render_samples(self.sample_batch)

    def metadata(self) -> dict[str, Any]:
        """Provenance of the weights: parametric or not, the loss's VGG, the data."""
        return {
            "parametric": self.config.parametric,
            "vgg": self.vgg_identity.to_dict(),
            "data": dict(getattr(self.dataset, "provenance", {}) or {}),
        }

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state()}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.step = int(state["step"])
        self.sampler = EpochSampler(len(self.dataset), self.config.train.seed, **state["sampler"])  # type: ignore[arg-type]
        self._sync_epoch()

    def start_fresh(self) -> None:
        if self.config.init_from:
            self.warm_start(Path(self.config.init_from))

    def check_resume(self, checkpoint: Path) -> None:
        """The same mode and VGG as the checkpoint's; other data is only warned about."""
        saved = read_metadata(checkpoint)
        parametric = saved.get("train_config", {}).get("parametric", False)
        if bool(parametric) != self.config.parametric:
            raise ValueError(f"{checkpoint} was trained with parametric={parametric}; this run differs")
        if saved.get("vgg", {}).get("sha256") not in (None, self.vgg_identity.sha256):
            raise ValueError(f"{checkpoint} was trained with different VGG weights ({saved['vgg']})")
        data = json.loads(json.dumps(getattr(self.dataset, "provenance", {}) or {}))  # as the checkpoint holds it
        if saved.get("data") not in (None, data):
            # Not fatal (a rebuilt cache may be intended), but the checkpoint will record the new data.
            log.warning("resuming on different data than %s was trained on: %s", checkpoint, data)

    def warm_start(self, directory: Path) -> None:
        """Start from the weights of a model directory; layers it lacks (e.g. a new head) keep their init."""
        theirs = from_pretrained(directory, network=type(self.model)).state_dict()
        own = self.model.state_dict()
        mismatched = [k for k, v in theirs.items() if k in own and own[k].shape != v.shape]
        unknown = [k for k in theirs if k not in own]
        if mismatched or unknown:
            raise ValueError(f"{directory} does not fit this network: {(mismatched + unknown)[:4]}")
        self.model.load_state_dict(theirs, strict=False)
        fresh = sorted({k.split(".")[0] for k in own if k not in theirs})
        step = read_metadata(directory).get("step")
        log.info("warm start from %s (step %s); new layers: %s", directory, step, fresh or "none")


def network_label(config: TrainSynthesisConfig) -> str:
    """What a run trains, for logs: ``SIMS``, ``parametric baseline`` or ``SPADE peer``."""
    if isinstance(config.model, SpadeConfig):
        return "SPADE peer"
    return "parametric baseline" if config.parametric else "SIMS"


def resize_layout(layout: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(B, H, W) class ids to ``size`` by nearest neighbour (the output resolution's layout)."""
    return F.interpolate(layout[:, None].float(), size=size, mode="nearest")[:, 0].long()


def random_crop(images: tuple[torch.Tensor, ...], size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The same random (rows, cols) window of every (..., H, W) tensor (whole tensors if smaller)."""
    h, w = images[0].shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    y = int(torch.randint(0, h - ch + 1, ()).item())
    x = int(torch.randint(0, w - cw + 1, ()).item())
    return tuple(t[..., y : y + ch, x : x + cw] for t in images)


def train_synthesis(
    config: TrainSynthesisConfig,
    out_dir: str | Path,
    *,
    dataset: Dataset | None = None,
    dataset_factory: Callable[[TrainSynthesisConfig], Dataset] | None = None,
    resume: bool = False,
    progress: bool = True,
    time_limit_minutes: float | None = None,
) -> SynthesisTrainResult:
    """Train (or, with ``resume``, continue) the synthesis network into the run directory ``out_dir``.

    The dataset is, in order of preference: ``dataset``, ``dataset_factory(config)``, or the one
    ``config.data`` names (:func:`synthesis.training.data.build_dataset`). Unlike the networks trained
    on a bank (:class:`~synthesis.training.harness.BankTraining`), synthesis trains on a canvas cache
    its config names (the bank is optional), so ``config`` comes first; the options and the result
    are the same.
    """
    result = train_network(  # SynthesisTrainer.finish makes it a SynthesisTrainResult
        lambda: _synthesis_trainer(config, dataset, dataset_factory),
        out_dir,
        config,
        name="train parametric" if config.parametric else "train synthesis",
        resume=resume,
        progress=progress,
        time_limit_minutes=time_limit_minutes,
    )
    return cast(SynthesisTrainResult, result)


def _synthesis_trainer(
    config: TrainSynthesisConfig,
    dataset: Dataset | None,
    dataset_factory: Callable[[TrainSynthesisConfig], Dataset] | None,
) -> SynthesisTrainer:
    """The data, checked against the contract once, and the trainer with its fixed sample batch."""
    t = config.train
    size = config.model.resolution
    if dataset is None:
        dataset = dataset_factory(config) if dataset_factory is not None else build_dataset(config.data, size)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training dataset is empty")
    set_epoch = getattr(dataset, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(0)  # the sample grid always shows epoch 0's samples; the trainer then sets its own epoch
    check_sample(dataset[0], size, config.model.num_classes)
    # Grid samples spread over the dataset (caches hold several variants of one image side by side).
    spread = np.unique(np.linspace(0, len(dataset) - 1, min(t.sample_count, len(dataset))).round().astype(int))  # type: ignore[arg-type]
    fixed = collate([dataset[int(i)] for i in spread])
    trainer = SynthesisTrainer(config, dataset)
    trainer.sample_batch = fixed
    log.info(
        "training %s: %d samples at %dx%d, batch %d, %d steps, VGG %s (%s), device %s, %s",
        network_label(config),
        len(dataset),  # type: ignore[arg-type]
        *size,
        t.batch_size,
        t.steps,
        trainer.vgg_identity.arch,
        trainer.vgg_identity.file_name,
        trainer.device,
        t.precision,
    )
    return trainer
