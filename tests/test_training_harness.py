"""The one training harness (run directory, resume, cadence, time limit) and config-file validation."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from sims.cli import main as sims_main
from synthesis.configs import ConfigError
from synthesis.model_directory import from_pretrained, load_training_state, read_metadata
from synthesis.networks.layout_refiner import LayoutRefiner
from synthesis.training.chain import Chain
from synthesis.training.harness import (
    Progress,
    RunDirectoryError,
    Schedule,
    Trainer,
    latest_checkpoint,
    run_training,
)
from synthesis.training.layout_refiner import LayoutRefinerRunConfig
from synthesis.training.ordering import OrderingRunConfig
from synthesis.training.segmenter import SegmenterRunConfig
from synthesis.training.synthesis import TrainSynthesisConfig
from synthesis.training.transform import TransformRunConfig

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = {
    "transform": TransformRunConfig,
    "ordering": OrderingRunConfig,
    "layout-refiner": LayoutRefinerRunConfig,
    "segmenter": SegmenterRunConfig,
    "synthesis": TrainSynthesisConfig,
}


class NoisyTrainer(Trainer):
    """A tiny network fitted to noise drawn from the global torch RNG and from a generator of its own."""

    def __init__(self, widths: tuple[int, ...] = (4, 4)) -> None:
        torch.manual_seed(0)
        self.model = LayoutRefiner(num_classes=3, resolution=(8, 8), widths=widths, convs=1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.generator = torch.Generator().manual_seed(1)
        self.evaluations = 0

    def training_step(self, progress: Progress) -> float:
        x = torch.rand(2, 4, 8, 8) + torch.rand(2, 4, 8, 8, generator=self.generator)
        loss = self.model(x).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def evaluate(self) -> dict[str, float]:
        self.evaluations += 1
        return {"score": float(self.evaluations)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def schedule(steps: int) -> Schedule:
    return Schedule(steps, checkpoint_every=2, log_every=1, eval_every=3, keep_checkpoints=2)


def test_a_run_directory_checkpoints_logs_and_prunes(tmp_path: Path) -> None:
    result = run_training(NoisyTrainer(), tmp_path / "run", schedule(5), {"what": "noise"}, progress=False)
    run = tmp_path / "run"
    assert result.step == result.steps_run == 5 and len(result.losses) == 5
    assert json.loads((run / "train_config.json").read_text()) == {"what": "noise"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004", "step-00000005"]
    assert latest_checkpoint(run) == result.checkpoint == run / "checkpoints" / "step-00000005"
    meta = read_metadata(run)  # a run directory reads as its newest checkpoint
    assert meta["step"] == 5 and meta["loss_history"] == result.losses and meta["train_config"] == {"what": "noise"}
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5] and records[3]["score"] == 2.0
    assert isinstance(from_pretrained(run), LayoutRefiner)
    with pytest.raises(RunDirectoryError, match="--resume"):
        run_training(NoisyTrainer(), run, schedule(6), {}, progress=False)


def test_resume_takes_exactly_the_uninterrupted_steps(tmp_path: Path) -> None:
    straight = run_training(NoisyTrainer(), tmp_path / "a", schedule(6), {}, progress=False)
    run_training(NoisyTrainer(), tmp_path / "b", schedule(3), {}, progress=False)
    resumed = run_training(NoisyTrainer(), tmp_path / "b", schedule(6), {}, resume=True, progress=False)
    assert resumed.steps_run == 3 and resumed.losses == straight.losses
    a, b = from_pretrained(tmp_path / "a").state_dict(), from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A finished run resumes to the same step and does nothing more; another network is refused.
    again = run_training(NoisyTrainer(), tmp_path / "b", schedule(6), {}, resume=True, progress=False)
    assert again.steps_run == 0 and again.checkpoint == resumed.checkpoint
    with pytest.raises(RunDirectoryError, match="another widths"):
        run_training(NoisyTrainer(widths=(4, 8)), tmp_path / "b", schedule(6), {}, resume=True, progress=False)


def test_the_time_limit_is_in_minutes_of_training_and_stops_with_a_checkpoint(tmp_path: Path) -> None:
    stopped = run_training(NoisyTrainer(), tmp_path / "run", schedule(6), {}, time_limit_minutes=0, progress=False)
    assert stopped.step == 0 and load_training_state(stopped.checkpoint)["step"] == 0
    resumed = run_training(NoisyTrainer(), tmp_path / "run", schedule(6), {}, resume=True, progress=False)
    assert resumed.step == 6 and resumed.steps_run == 6
    assert Progress(step=1, steps=10, seconds=30.0, time_limit_seconds=60.0).fraction == 0.5  # time leads
    assert Progress(step=8, steps=10, seconds=30.0, time_limit_seconds=60.0).fraction == 0.8  # steps lead


@pytest.mark.parametrize("network", sorted(RUN_CONFIGS))
def test_shipped_run_configs_validate_and_round_trip(network: str) -> None:
    cls = RUN_CONFIGS[network]
    paths = sorted((REPO / "configs" / network).glob("*.json"))
    assert paths
    for path in paths:
        config = cls.load(path)
        assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_sets_name_loadable_run_configs() -> None:
    for path in sorted((REPO / "configs/train-all").glob("*.json")):
        chain = Chain.load(path)
        assert chain.transform.model.num_classes == chain.synthesis.model.num_classes == 11


def test_bad_config_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = json.loads((REPO / "configs/transform/tiny.json").read_text())
    cases = {
        "wrong type": ({**good, "train": {**good["train"], "steps": "many"}}, "train.steps: Input should be"),
        "old section": ({"model": good["model"], "training": good["train"]}, "unknown config keys: ['training']"),
        "unknown key": ({**good, "train": {**good["train"], "stepz": 3}}, "unknown train config keys: ['stepz']"),
        "bad value": ({**good, "model": {**good["model"], "window_margin": 0.5}}, "model: window_margin must be"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(message)):
            TransformRunConfig.load(path)
        args = ["train", "transform", "-b", str(tmp_path), "-o", str(tmp_path / "out"), "-c", str(path)]
        assert sims_main(args) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TransformRunConfig.load(tmp_path / "broken.json")
