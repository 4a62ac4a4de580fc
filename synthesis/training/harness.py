"""One training harness for every SIMS network: a trainer brings its data and its step, the harness the rest.

A run directory, whatever the network::

    RUN/train_config.json            the config the run started with
    RUN/checkpoints/step-00000500/   a model directory plus training_state.pt (synthesis.model_directory);
                                     the newest ``keep_checkpoints`` are kept
    RUN/latest.json                  names the newest complete checkpoint
    RUN/train_log.jsonl              one JSON record per log step: loss, evaluation, seconds
    RUN/samples/step-00000500.png    sample grids, for trainers that draw them

**Resume.** ``resume=True`` continues a run directory from its newest checkpoint (without it, a
directory that holds a run is refused). A checkpoint's training state holds the step, the training
time so far and every global RNG state (torch, numpy, Python), plus the trainer's own state
(optimizer, generators, data position), so a resumed run takes exactly the steps an
uninterrupted one would. A checkpoint of another network config is refused.

**Time limit**, in minutes of training, resumed parts included: when it is reached the run
writes a checkpoint and stops; resume with a larger limit to go on. :attr:`Progress.fraction` is
the share of the run done by steps or by time, whichever is further, so a learning-rate schedule
that follows it still ends annealed when time runs out first.

**Export**: :func:`synthesis.model_directory.export_float16` of the run directory (its newest
checkpoint) is the shipping form.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from memory_bank.atomic import write_json_atomic
from memory_bank.errors import SimsError
from synthesis.model_directory import (
    LATEST_FILE,
    TRAINING_STATE_FILE,
    from_pretrained,
    load_training_state,
    read_config,
    read_metadata,
    save_pretrained,
)

if TYPE_CHECKING:
    from memory_bank import Bank

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
LOG_FILE = "train_log.jsonl"
#: Keys of the training state that the harness owns; a trainer's own state goes beside them.
HARNESS_STATE_KEYS = frozenset({"step", "seconds", "rng"})


class RunDirectoryError(SimsError, ValueError):
    """A run directory cannot be used as asked: it holds a run (and no resume was asked), or another one."""


@dataclass(frozen=True)
class Schedule:
    """When the harness does what, in steps.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this count).
        checkpoint_every: steps between checkpoints (one is also written at the end and on a time-out).
        log_every: steps between log records.
        eval_every: steps between :meth:`Trainer.evaluate` calls (None: never during the run).
        sample_every: steps between sample grids (None: none; else also at the end and on a time-out).
        keep_checkpoints: how many recent checkpoints to keep.
    """

    steps: int
    checkpoint_every: int
    log_every: int
    eval_every: int | None = None
    sample_every: int | None = None
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.steps < 0 or min(self.checkpoint_every, self.log_every, self.keep_checkpoints) < 1:
            raise ValueError(f"need steps >= 0 and checkpoint_every, log_every, keep_checkpoints >= 1: {self}")


@dataclass(frozen=True)
class RunSettings:
    """What every config ``train`` section holds (a base of each trainer's settings).

    Attributes:
        seed: of torch, numpy and Python's generators before the trainer is built (:func:`train_network`).
        threads: torch CPU threads (None: torch's default).
        keep_checkpoints: how many recent checkpoints to keep.
    """

    seed: int = 0
    threads: int | None = None
    keep_checkpoints: int = 2


class ScheduledSettings(RunSettings):
    """Base of a ``train`` section counted in steps: ``steps``, ``checkpoint_every``, ``log_every`` and, where
    the section has them, ``eval_every`` and ``sample_every`` (absent, 0 or None: never)."""

    def schedule(self) -> Schedule:
        """The harness's cadence of these settings."""
        s: Any = self  # the subclass's fields
        return Schedule(
            s.steps,
            s.checkpoint_every,
            s.log_every,
            eval_every=getattr(s, "eval_every", None) or None,
            sample_every=getattr(s, "sample_every", None) or None,
            keep_checkpoints=s.keep_checkpoints,
        )


@dataclass(frozen=True)
class Progress:
    """Where a run is when a step starts: ``step`` steps done of ``steps``, ``seconds`` of training."""

    step: int
    steps: int
    seconds: float
    time_limit_seconds: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the run done, by steps or by time, whichever is further (0..1)."""
        done = self.step / max(self.steps, 1)
        if self.time_limit_seconds:
            done = max(done, self.seconds / self.time_limit_seconds)
        return min(done, 1.0)


class Trainer:
    """What a network's trainer supplies: its model, one step, and the state that resumes it.

    Subclasses must set ``model`` and implement :meth:`training_step`, :meth:`state_dict` and
    :meth:`load_state_dict`; the other hooks are optional.
    """

    model: nn.Module
    #: The run directory's file of the final scores (``{"step", "seconds", **scores}``), written when there are any.
    scores_file: str | None = None

    def training_step(self, progress: Progress) -> float:
        """One optimizer step; returns its loss."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What resumes the trainer besides the weights and the global RNGs: optimizer, generators, data position."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (``state`` also holds the harness's keys)."""
        raise NotImplementedError

    def start_fresh(self) -> None:
        """Called once when a run starts in an empty directory (e.g. a warm start from other weights)."""

    def check_resume(self, checkpoint: Path) -> None:
        """Refuse to resume from ``checkpoint`` when it was trained in an incompatible way (raise ValueError)."""

    def metadata(self) -> dict[str, Any]:
        """What every checkpoint's ``sims.json`` records besides step, time, loss curve and config."""
        return {}

    def extra_files(self) -> dict[str, str | bytes]:
        """Files every checkpoint holds beside the weights (name -> content)."""
        return {}

    def evaluate(self) -> dict[str, float]:
        """Scores for the log, every ``eval_every`` steps."""
        return {}

    def samples(self) -> np.ndarray | None:
        """A uint8 (H, W, 3) sample grid, every ``sample_every`` steps."""
        return None

    def schedule(self) -> Schedule | None:
        """The run's cadence (what :func:`train_network` passes to :func:`run_training`); None, the default:
        the :meth:`ScheduledSettings.schedule` of the run config's ``train`` section."""
        return None

    def finish(self, result: TrainResult, progress: bool) -> TrainResult:
        """The run's final scores and summary lines (:meth:`TrainResult.summarised`), once the loop is over."""
        return result

    def close(self) -> None:
        """Release what the trainer holds besides memory (e.g. a batch thread)."""


class OptimizerTrainer(Trainer):
    """A :class:`Trainer` whose resume state is its ``optimizer`` and, where it has them, its own torch
    ``generator`` and numpy ``rng``: saved as ``optimizer``, ``generator`` and ``numpy_generator``.

    Subclasses set ``optimizer`` (and ``generator`` / ``rng`` when they draw from their own generators)
    and extend :meth:`state_dict` for anything else that resumes them.
    """

    optimizer: torch.optim.Optimizer
    generator: torch.Generator | None = None
    rng: np.random.Generator | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        if self.rng is not None:
            state["numpy_generator"] = self.rng.bit_generator.state
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        if self.rng is not None:
            self.rng.bit_generator.state = state["numpy_generator"]


@dataclass(frozen=True)
class TrainResult:
    """What a run did, whatever the network: :func:`run_training` fills the run's part, the trainer the rest.

    Attributes:
        out_dir: the run directory; ``checkpoint`` its newest checkpoint.
        step: steps done by every part of the run (resumes included); ``steps`` the run's total.
        steps_run: steps done by this part.
        seconds: training seconds of every part; ``seconds_this_run`` this part's.
        losses: every step's loss, every part.
        scores: what the run measured, JSON-ready: the newest scores of the log, then the trainer's final
            scores and the counts they are over (also in the run directory's results file).
        lines: the summary ``sims train <network>`` prints, one line each.
    """

    out_dir: Path
    checkpoint: Path
    step: int
    steps: int
    steps_run: int
    seconds: float
    seconds_this_run: float
    losses: list[float]
    scores: dict[str, Any] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Whether the run reached its last step (False: a time limit stopped it first)."""
        return self.step >= self.steps

    def summarised(self, scores: Mapping[str, Any], lines: Sequence[str]) -> TrainResult:
        """This result with the trainer's final ``scores`` (over the log's) and its summary ``lines``."""
        return replace(self, scores={**self.scores, **scores}, lines=tuple(lines))


class RunConfig(Protocol):
    """What :func:`train_network` needs of a run config: a ``train`` section with ``seed`` and ``threads``."""

    @property
    def train(self) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


def train_network(
    build: Callable[[], Trainer],
    out_dir: str | Path,
    config: RunConfig,
    *,
    name: str,
    resume: bool = False,
    progress: bool = True,
    time_limit_minutes: float | None = None,
) -> TrainResult:
    """Every trainer's entry: threads and seeds, ``build()`` the trainer, run it, then its final scores.

    Seeding comes before ``build`` so the initial weights and data order follow ``config.train.seed``.
    """
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    trainer = build()
    try:
        result = run_training(
            trainer,
            out_dir,
            trainer.schedule() or config.train.schedule(),
            config.to_dict(),
            resume=resume,
            time_limit_minutes=time_limit_minutes,
            progress=progress,
            name=name,
        )
        result = trainer.finish(result, progress)
    finally:
        trainer.close()
    if trainer.scores_file and result.scores:
        record = {"step": result.step, "seconds": round(result.seconds, 1), **result.scores}
        write_json_atomic(result.out_dir / trainer.scores_file, record)
    return result


@dataclass(frozen=True)
class BankTraining:
    """A network trained on a bank (transform, ordering, layout refiner, segmenter): the one entry shape.

    Calling it trains (or, with ``resume``, continues) a run: ``train_x(bank, out, config, *, val_bank=None,
    resume=False, progress=True, time_limit_minutes=None) -> TrainResult``, where ``config`` is a
    ``run_config`` (``configs/<name>/*.json``) and ``val_bank``, when given, is scored as the run goes
    and at its end.

    Attributes:
        name: the network's name: its ``sims train`` command, ``configs/`` folder and ``weights/`` folder.
        run_config: its run config class.
        trainer: builds its :class:`Trainer` from ``(bank, config, val_bank, progress)``.
    """

    name: str
    run_config: type[Any]
    trainer: Callable[[Bank, Any, Bank | None, bool], Trainer]

    def __call__(
        self,
        bank: Bank,
        out: str | Path,
        config: Any,
        *,
        val_bank: Bank | None = None,
        resume: bool = False,
        progress: bool = True,
        time_limit_minutes: float | None = None,
    ) -> TrainResult:
        if not isinstance(config, self.run_config):
            raise TypeError(f"train {self.name} takes a {self.run_config.__name__}, got {type(config).__name__}")
        return train_network(
            lambda: self.trainer(bank, config, val_bank, progress),
            out,
            config,
            name=f"train {self.name}",
            resume=resume,
            progress=progress,
            time_limit_minutes=time_limit_minutes,
        )


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def set_threads(threads: int | None) -> None:
    """torch CPU threads (None or 0: torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    out_dir = Path(out_dir)
    pointer = out_dir / LATEST_FILE
    if pointer.is_file():
        path = out_dir / json.loads(pointer.read_text())["checkpoint"]
        if (path / TRAINING_STATE_FILE).is_file():
            return path
    # The pointer is written after the checkpoint: fall back to the highest complete step directory.
    found = sorted(p for p in (out_dir / CHECKPOINTS_DIR).glob("step-*") if (p / TRAINING_STATE_FILE).is_file())
    return found[-1] if found else None


def run_training(
    trainer: Trainer,
    out_dir: str | Path,
    schedule: Schedule,
    config: Mapping[str, Any],
    *,
    resume: bool = False,
    time_limit_minutes: float | None = None,
    progress: bool = True,
    name: str = "train",
) -> TrainResult:
    """Train ``trainer`` into the run directory ``out_dir`` (fresh, or resumed from its newest checkpoint).

    ``config`` (JSON-able) is the run's config: the snapshot of a fresh run, and part of every
    checkpoint's metadata. ``name`` labels the progress bar and the log lines.
    """
    out_dir = Path(out_dir)
    run = _Run(trainer, out_dir, schedule, dict(config), time_limit_minutes, name)
    # 1. The run directory: fresh, or resumed from its newest checkpoint.
    existing = latest_checkpoint(out_dir)
    if existing is not None and not resume:
        raise RunDirectoryError(
            f"{out_dir} already holds a run (newest checkpoint {existing.name}); pass --resume or a new --out"
        )
    if existing is not None:
        run.restore(existing)
        log.info("%s: resumed from %s at step %d (%.1f min trained so far)", name, existing, run.step, run.before / 60)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / CONFIG_FILE, run.config)
        trainer.start_fresh()
    # 2. The loop.
    checkpoint = existing
    start_step = run.step
    if run.step == 0 and schedule.eval_every:
        run.record({"step": 0, **trainer.evaluate()})
    bar = tqdm(total=schedule.steps, initial=run.step, desc=name, unit="step", disable=not progress)
    try:
        while run.step < schedule.steps and not run.out_of_time():
            loss = trainer.training_step(run.progress())
            if not np.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss} at step {run.step}; lower the learning rate")
            run.step += 1
            run.losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", avg50=f"{np.mean(run.losses[-50:]):.3f}")
            checkpoint = run.after_step() or checkpoint
    finally:
        bar.close()
    if run.out_of_time() and run.step < schedule.steps:
        log.info(
            "%s: time limit of %.1f min reached at step %d; --resume with a larger --time-limit-minutes to go on",
            name,
            time_limit_minutes,
            run.step,
        )
    if checkpoint is None:  # nothing to train (steps == 0): still leave a loadable checkpoint
        checkpoint = run.save()
    return TrainResult(
        out_dir=out_dir,
        checkpoint=checkpoint,
        step=run.step,
        steps=schedule.steps,
        steps_run=run.step - start_step,
        losses=list(run.losses),
        seconds=run.seconds(),
        seconds_this_run=run.seconds() - run.before,
        scores=dict(run.evaluation),
    )


class _Run:
    """The bookkeeping of one :func:`run_training` call."""

    def __init__(
        self,
        trainer: Trainer,
        out_dir: Path,
        schedule: Schedule,
        config: dict[str, Any],
        time_limit_minutes: float | None,
        name: str,
    ) -> None:
        self.trainer, self.out_dir, self.schedule, self.config, self.name = trainer, out_dir, schedule, config, name
        self.limit = None if time_limit_minutes is None else 60.0 * time_limit_minutes
        self.step = 0
        self.losses: list[float] = []
        self.before = 0.0  # training seconds of earlier parts of the run
        self.started = time.perf_counter()
        self.evaluation: dict[str, float] = {}

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return self.limit is not None and self.seconds() >= self.limit

    def progress(self) -> Progress:
        return Progress(self.step, self.schedule.steps, self.seconds(), self.limit)

    def after_step(self) -> Path | None:
        """Log, evaluate, draw and checkpoint as the schedule says; returns the checkpoint if one was written."""
        s, step = self.schedule, self.step
        last = step == s.steps or self.out_of_time()
        record: dict[str, Any] = {}
        if step % s.log_every == 0 or last:
            recent = self.losses[-s.log_every :]
            record = {"step": step, "loss": float(np.mean(recent)), "seconds": round(self.seconds(), 1)}
        if s.eval_every and step % s.eval_every == 0:
            record = {"step": step, **record, **self.trainer.evaluate()}
        if s.sample_every and (step % s.sample_every == 0 or last):
            grid = self.trainer.samples()
            if grid is not None:
                (self.out_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
                Image.fromarray(grid).save(self.out_dir / SAMPLES_DIR / f"step-{step:08d}.png")
        checkpoint = self.save() if step % s.checkpoint_every == 0 or last else None
        if record:
            self.record(record)
        return checkpoint

    def record(self, record: dict[str, Any]) -> None:
        """One line of ``train_log.jsonl`` and of the log."""
        scores = {k: v for k, v in record.items() if k not in ("step", "loss", "seconds")}
        self.evaluation.update(scores)
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        log.info("%s: %s", self.name, text)
        with (self.out_dir / LOG_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self) -> Path:
        """Write a checkpoint, point ``latest.json`` at it and prune old ones."""
        name = f"step-{self.step:08d}"
        seconds = self.seconds()
        metadata = {
            "step": self.step,
            "seconds": round(seconds, 1),
            **self.trainer.metadata(),
            "train_config": self.config,
            "loss_history": list(self.losses),
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        own = self.trainer.state_dict()
        clash = HARNESS_STATE_KEYS & set(own)
        if clash:
            raise ValueError(f"trainer state keys {sorted(clash)} are the harness's")
        state = {**own, "step": self.step, "seconds": seconds, "rng": _rng_state()}
        path = save_pretrained(
            self.trainer.model,
            self.out_dir / CHECKPOINTS_DIR / name,
            metadata,
            training_state=state,
            extra_files=self.trainer.extra_files(),
        )
        write_json_atomic(self.out_dir / LATEST_FILE, {"checkpoint": f"{CHECKPOINTS_DIR}/{name}", "step": self.step})
        for old in sorted((self.out_dir / CHECKPOINTS_DIR).glob("step-*"))[: -self.schedule.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: weights, trainer state, step, time, losses, then the RNGs."""
        model = self.trainer.model
        saved = read_config(checkpoint)
        if type(saved) is not type(model.config) or saved != model.config:
            diff = [f.name for f in fields(saved) if getattr(saved, f.name) != getattr(model.config, f.name, None)]
            raise RunDirectoryError(
                f"{self.out_dir} holds a run with another {', '.join(diff) or type(saved).__name__} "
                f"({checkpoint.name}); use a new --out"
            )
        self.trainer.check_resume(checkpoint)
        model.load_state_dict(from_pretrained(checkpoint).state_dict())
        state = load_training_state(checkpoint)
        self.trainer.load_state_dict(state)
        self.step, self.before = int(state["step"]), float(state["seconds"])
        self.losses = [float(v) for v in read_metadata(checkpoint).get("loss_history", [])]
        _set_rng_state(state["rng"])


def _rng_state() -> dict[str, Any]:
    """The global RNG states, in types ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "BankTraining",
    "OptimizerTrainer",
    "Progress",
    "RunConfig",
    "RunDirectoryError",
    "RunSettings",
    "Schedule",
    "ScheduledSettings",
    "TrainResult",
    "Trainer",
    "latest_checkpoint",
    "run_training",
    "seed_everything",
    "set_threads",
    "train_network",
]
