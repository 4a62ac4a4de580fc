"""``sims train all``: every network of SIMS trained on one bank, in order, resumably.

The chain, one stage after another (each stage a run of its own trainer through the harness):

1. ``transform``: the transformation network T (:mod:`synthesis.training.transform`);
2. ``ordering``: the ordering network and its class prior (:mod:`synthesis.training.ordering`);
3. ``canvas``: the simulated canvas cache synthesis trains on (:func:`~synthesis.canvas.simulate.write_canvas_cache`);
4. ``synthesis``: the synthesis network (:mod:`synthesis.training.synthesis`);
5. ``synthesis-parametric``: its parametric baseline, the same network trained on empty canvases;
6. ``layout-refiner``: the coarse-to-fine layout refiner (:mod:`synthesis.training.layout_refiner`);
7. ``segmenter``: the segmentation probe of ``sims eval`` (:mod:`synthesis.training.segmenter`).

It writes one directory::

    OUT/runs/<stage>/        each network's run directory (checkpoints, log, samples)
    OUT/canvas-cache/        the simulated canvases
    OUT/weights/<stage>/     each network's float16 export: the layout of the repository's weights/,
                             which ``sims serve --with-worker --weights-dir OUT/weights`` serves

A network stage is done when its export exists, and is skipped on a rerun; an interrupted stage
resumes from its newest checkpoint. The run configs come from a config set
(``configs/train-all/<name>.json``, validated up front); every network takes its class count
from the bank.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from memory_bank import Bank, open_bank
from synthesis.configs import ConfigError, JsonConfig, load_config_file
from synthesis.model_directory import CONFIG_FILE, export_float16
from synthesis.networks.vgg import VGG_HOW_TO
from synthesis.training.layout_refiner import LayoutRefinerRunConfig
from synthesis.training.ordering import OrderingRunConfig
from synthesis.training.registry import BANK_TRAINERS
from synthesis.training.segmenter import SegmenterRunConfig
from synthesis.training.synthesis import TrainSynthesisConfig
from synthesis.training.transform import TransformRunConfig

log = logging.getLogger(__name__)

#: The stages in the order they run; a network stage's name is its folder under ``runs/`` and ``weights/``
#: (the names of the repository's ``weights/``, which the worker's settings expect).
STAGES = ("transform", "ordering", "canvas", "synthesis", "synthesis-parametric", "layout-refiner", "segmenter")
RUNS_DIR, WEIGHTS_DIR, CACHE_DIR = "runs", "weights", "canvas-cache"


@dataclass(frozen=True)
class CanvasRecipe:
    """The simulated canvas cache (the options of ``sims canvas simulate``).

    Attributes:
        variants: simulated canvases per bank image.
        size: (rows, cols) they are stored at; None: the bank's resolution.
        seed, k, mode, color_transfer: of the retrievals, picks and colour transfer.
        bands: elision band of each variant in turn (empty: the test-time default).
    """

    variants: int = 4
    size: tuple[int, int] | None = (192, 256)
    seed: int = 0
    k: int = 5
    mode: str = "fast"
    color_transfer: float = 0.2
    bands: tuple[float, ...] = ()


@dataclass(frozen=True)
class ConfigSet(JsonConfig):
    """A config set file (``configs/train-all/``): each network's run config file, relative to it, and the canvases."""

    transform: str
    ordering: str
    synthesis: str
    layout_refiner: str
    segmenter: str
    canvas: CanvasRecipe = field(default_factory=CanvasRecipe)


@dataclass(frozen=True)
class Chain:
    """Every run config of the chain, read and validated."""

    transform: TransformRunConfig
    ordering: OrderingRunConfig
    canvas: CanvasRecipe
    synthesis: TrainSynthesisConfig
    layout_refiner: LayoutRefinerRunConfig
    segmenter: SegmenterRunConfig

    @classmethod
    def load(cls, path: str | Path) -> Chain:
        """Read a config set file and every run config it names."""
        path = Path(path)
        files = ConfigSet.load(path)
        base = path.parent
        networks = {
            spec.key: load_config_file(spec.load().run_config, base / getattr(files, spec.key))
            for spec in BANK_TRAINERS.values()
        }
        synthesis = load_config_file(TrainSynthesisConfig, base / files.synthesis)
        return cls(**networks, canvas=files.canvas, synthesis=synthesis)

    def network(self, name: str) -> JsonConfig:
        """The run config of the bank-trained network ``name`` (a key of :data:`BANK_TRAINERS`)."""
        return getattr(self, BANK_TRAINERS[name].key)

    def for_bank(self, bank: Bank, bank_path: str, cache_dir: Path, vgg_weights: str | None) -> Chain:
        """The configs with the bank's class count, the synthesis data set to the chain's canvas cache."""
        classes = {"model.num_classes": len(bank.classes)}
        synthesis = self.synthesis.with_overrides(
            **classes,
            **{"data.kind": "simulated", "data.cache_dir": str(cache_dir), "data.bank": bank_path},
            **{"vgg.path": vgg_weights},
        )
        if synthesis.vgg.path is None:
            raise ConfigError(
                f"synthesis needs the VGG of its loss: pass --vgg-weights or set SIMS_VGG_WEIGHTS; {VGG_HOW_TO}"
            )
        # A run config with a model section takes the bank's class count (the segmenter's classes are the bank's).
        networks: dict[str, JsonConfig] = {}
        for spec in BANK_TRAINERS.values():
            config = self.network(spec.name)
            networks[spec.key] = config.with_overrides(**classes) if hasattr(config, "model") else config
        return replace(self, **networks, synthesis=synthesis)


@dataclass
class ChainResult:
    """What :func:`train_chain` did: each stage's outcome (``done``, ``trained``, or ``stopped`` by its time limit)."""

    out_dir: Path
    stages: dict[str, str]

    @property
    def complete(self) -> bool:
        return all(v in ("done", "trained") for v in self.stages.values()) and len(self.stages) == len(STAGES)

    @property
    def weights_dir(self) -> Path:
        return self.out_dir / WEIGHTS_DIR


def train_chain(
    bank: str | Path,
    out_dir: str | Path,
    chain: Chain,
    *,
    val_bank: str | Path | None = None,
    vgg_weights: str | None = None,
    time_limit_minutes: float | None = None,
    progress: bool = True,
) -> ChainResult:
    """Run (or continue) the whole chain on ``bank`` into ``out_dir``; see the module docstring.

    ``time_limit_minutes`` bounds each network stage's training; a stage it stops ends the chain
    for now (rerun with a larger limit to go on).
    """
    from synthesis.canvas.builder import CanvasOptions
    from synthesis.canvas.simulate import CACHE_MANIFEST, write_canvas_cache
    from synthesis.training.synthesis import train_synthesis

    out = Path(out_dir)
    train_bank = open_bank(bank)
    val = open_bank(val_bank) if val_bank is not None else None
    cache_dir = out / CACHE_DIR
    chain = chain.for_bank(train_bank, str(bank), cache_dir, vgg_weights)
    runs = out / RUNS_DIR
    options = {"resume": True, "progress": progress, "time_limit_minutes": time_limit_minutes}
    n, classes = train_bank.num_images, len(train_bank.classes)
    log.info("train all: bank %s (%d images, %d classes) -> %s", bank, n, classes, out)

    # Each stage trains (or resumes) and returns how far it got: (done, total) steps.
    def network(name: str) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            train = BANK_TRAINERS[name].load()
            result = train(train_bank, runs / name, chain.network(name), val_bank=val, **options)
            return result.step, result.steps

        return run

    def canvas() -> tuple[float, float]:
        r = chain.canvas
        write_canvas_cache(
            train_bank,
            cache_dir,
            variants=r.variants,
            size=r.size,
            seed=r.seed,
            color_transfer=r.color_transfer,
            options=CanvasOptions(k=r.k, mode=r.mode),  # type: ignore[arg-type]
            bands=r.bands,
            progress=progress,
        )
        return 1, 1

    def synthesis(parametric: bool) -> Callable[[], tuple[float, float]]:
        name = "synthesis-parametric" if parametric else "synthesis"

        def run() -> tuple[float, float]:
            result = train_synthesis(chain.synthesis.with_overrides(parametric=parametric), runs / name, **options)
            return result.step, result.steps

        return run

    def finished(name: str) -> Path | None:
        """Where a finished stage's output is (None: not finished)."""
        if name == "canvas":
            manifest = cache_dir / CACHE_MANIFEST
            return cache_dir if manifest.is_file() and json.loads(manifest.read_text()).get("complete") else None
        weights = out / WEIGHTS_DIR / name
        return weights if (weights / CONFIG_FILE).is_file() else None

    stages: dict[str, Callable[[], tuple[float, float]]] = {
        **{name: network(name) for name in BANK_TRAINERS},
        "canvas": canvas,
        "synthesis": synthesis(parametric=False),
        "synthesis-parametric": synthesis(parametric=True),
    }
    outcome: dict[str, str] = {}
    for number, name in enumerate(STAGES, 1):
        label = f"[{number}/{len(STAGES)}] {name}"
        if (done_at := finished(name)) is not None:
            log.info("%s: done earlier (%s)", label, done_at)
            outcome[name] = "done"
            continue
        log.info("%s: training", label)
        start = time.perf_counter()
        done, total = stages[name]()
        if done < total:
            log.warning(
                "%s: stopped by the time limit at %g of %g; rerun with a larger --time-limit-minutes to go on",
                label,
                done,
                total,
            )
            outcome[name] = "stopped"
            break
        result = cache_dir if name == "canvas" else export_float16(runs / name, out / WEIGHTS_DIR / name)
        log.info("%s: finished in %.1f min -> %s", label, (time.perf_counter() - start) / 60, result)
        outcome[name] = "trained"
    return ChainResult(out, outcome)


__all__ = ["STAGES", "CanvasRecipe", "Chain", "ChainResult", "ConfigSet", "train_chain"]
