"""Training the synthesis network: the data contract, one step, checkpoints, exact resume, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memory_bank import Bank
from sims.cli import main as sims_main
from synthesis.model_directory import from_pretrained, load_training_state, read_metadata
from synthesis.training.data import BlockCanvasDataset, DataConfig, build_dataset, check_sample, collate, empty_canvas
from synthesis.training.harness import latest_checkpoint
from synthesis.training.synthesis import EpochSampler, SynthesisTrainer, TrainSynthesisConfig, train_synthesis

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthesis"
SIZE = (24, 32)


@pytest.fixture(scope="module")
def dataset(val_bank: Bank) -> BlockCanvasDataset:
    return BlockCanvasDataset.from_bank(val_bank, SIZE, seed=1)


@pytest.fixture()
def config(tiny_vgg: Path, val_bank_path: Path) -> TrainSynthesisConfig:
    cfg = TrainSynthesisConfig.load(CONFIGS / "tiny.json")
    return cfg.with_overrides(**{"vgg.path": str(tiny_vgg), "data.bank": str(val_bank_path)})


def test_shipped_configs_parse() -> None:
    paths = sorted(CONFIGS.glob("*.json"))
    assert len(paths) >= 3
    for path in paths:
        cfg = TrainSynthesisConfig.load(path)
        assert cfg.model.num_classes == 11
        assert TrainSynthesisConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainSynthesisConfig.load(bad)
    good = json.loads((CONFIGS / "tiny.json").read_text())
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainSynthesisConfig.from_dict({**good, "train": {"stepz": 3}})
    with pytest.raises(ValueError, match="precision"):
        TrainSynthesisConfig.from_dict({**good, "train": {"precision": "fp8"}})


def test_block_dataset_meets_the_contract(dataset: BlockCanvasDataset, val_bank: Bank) -> None:
    assert len(dataset) == val_bank.num_images
    sample = dataset[0]
    check_sample(sample, SIZE, 11)
    hole = sample["missing"][0] > 0
    assert hole.any() and torch.all(sample["canvas"][:, hole] == 0)
    assert torch.equal(sample["canvas"][:, ~hole], sample["photo"][:, ~hole])
    # Reproducible per (seed, epoch, index); a new epoch draws new holes.
    assert torch.equal(dataset[3]["missing"], dataset[3]["missing"])
    before = dataset[3]["missing"]
    dataset.set_epoch(1)
    try:
        assert not torch.equal(before, dataset[3]["missing"])
    finally:
        dataset.set_epoch(0)
    assert dataset.provenance["bank_version"] == val_bank.version


def test_check_sample_rejects_broken_samples(dataset: BlockCanvasDataset) -> None:
    good = dataset[0]
    with pytest.raises(ValueError, match="lacks"):
        check_sample({k: v for k, v in good.items() if k != "missing"}, SIZE, 11)
    with pytest.raises(ValueError, match="layout"):
        check_sample({**good, "layout": good["layout"].int()}, SIZE, 11)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_sample({**good, "photo": good["photo"] * 255}, SIZE, 11)
    with pytest.raises(ValueError, match="outside"):
        check_sample({**good, "layout": torch.full(SIZE, 11)}, SIZE, 11)
    with pytest.raises(ValueError, match="must be"):
        check_sample(good, (SIZE[0], SIZE[1] * 2), 11)
    with pytest.raises(ValueError, match="canvas"):
        check_sample({**good, "canvas": good["canvas"][:2]}, SIZE, 11)


def test_build_dataset_by_kind(val_bank_path: Path) -> None:
    ds = build_dataset(DataConfig(kind="blocks", bank=str(val_bank_path)), SIZE)
    assert ds[0]["photo"].shape == (3, *SIZE)
    with pytest.raises(ValueError, match="unknown data kind"):
        build_dataset(DataConfig(kind="nope"), SIZE)
    with pytest.raises(ValueError, match="cache_dir"):
        build_dataset(DataConfig(kind="simulated"), SIZE)


def test_epoch_sampler_covers_each_epoch_and_resumes() -> None:
    s = EpochSampler(5, seed=3)
    first = s.next_indices(5)
    assert sorted(first) == list(range(5))
    epochs: list[int] = []
    assert len(s.next_indices(7, epochs.append)) == 7
    assert epochs == [1, 2]
    state = s.state()
    resumed = EpochSampler(5, 3, **state)
    assert resumed.next_indices(6) == s.next_indices(6)


def test_one_step_lowers_the_loss_on_a_fixed_batch(config: TrainSynthesisConfig, dataset: BlockCanvasDataset) -> None:
    trainer = SynthesisTrainer(config, dataset)
    batch = collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        before = float(trainer.loss(trainer.to_device(batch)))
    reported = trainer.train_step(batch)
    with torch.no_grad():
        after = float(trainer.loss(trainer.to_device(batch)))
    assert reported == pytest.approx(before, rel=1e-5)
    assert after < before
    assert trainer.step == 1 and trainer.loss_history == [reported]


def test_parametric_mode_empties_the_canvas(config: TrainSynthesisConfig, dataset: BlockCanvasDataset) -> None:
    trainer = SynthesisTrainer(replace(config, parametric=True), dataset)
    batch = collate([dataset[i] for i in range(2)])
    device_batch = trainer.to_device(batch)
    assert torch.all(device_batch["canvas"] == 0) and torch.all(device_batch["missing"] == 1)
    assert torch.equal(device_batch["photo"], batch["photo"])
    emptied = empty_canvas(batch)
    assert torch.all(emptied["missing"] == 1) and not torch.all(batch["missing"] == 1)  # input left alone


def test_train_writes_checkpoints_and_samples(
    config: TrainSynthesisConfig, dataset: BlockCanvasDataset, tmp_path: Path
) -> None:
    result = train_synthesis(config, tmp_path / "run", dataset=dataset, progress=False)
    assert result.step == 4 and result.steps_run == 4 and len(result.losses) == 4
    run = tmp_path / "run"
    assert json.loads((run / "train_config.json").read_text()) == config.to_dict()
    ckpt = latest_checkpoint(run)
    assert ckpt == result.checkpoint and ckpt is not None and ckpt.name == "step-00000004"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    meta = read_metadata(ckpt)
    assert meta["step"] == 4 and meta["loss_history"] == result.losses and not meta["parametric"]
    assert meta["vgg"]["arch"] == "vgg16" and meta["vgg"]["sha256"] == result.vgg.sha256
    assert meta["vgg"]["convention"] == "caffe-bgr"
    assert meta["data"]["kind"] == "blocks" and meta["data"]["bank_version"] == dataset.provenance["bank_version"]
    assert meta["train_config"] == config.to_dict()
    assert load_training_state(ckpt)["sampler"] == {"epoch": 0, "cursor": 8}  # 8 images, 4 steps of 2
    grid = np.asarray(Image.open(run / "samples" / "step-00000004.png"))
    assert grid.shape == (2 * SIZE[0], 4 * SIZE[1], 3)  # 2 samples: layout | canvas | output | photo
    # The photo column of the grid is the first sample's photo.
    photo0 = (dataset[0]["photo"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(grid[: SIZE[0], 3 * SIZE[1] :], photo0)
    with pytest.raises(ValueError, match="--resume"):
        train_synthesis(config, run, dataset=dataset, progress=False)


def test_resume_continues_exactly(config: TrainSynthesisConfig, dataset: BlockCanvasDataset, tmp_path: Path) -> None:
    config = config.with_overrides(**{"train.steps": 6, "train.checkpoint_every": 3, "train.sample_every": 100})
    straight = train_synthesis(config, tmp_path / "a", dataset=dataset, progress=False)
    half = config.with_overrides(**{"train.steps": 3})
    train_synthesis(half, tmp_path / "b", dataset=dataset, progress=False)
    resumed = train_synthesis(config, tmp_path / "b", dataset=dataset, resume=True, progress=False)
    assert resumed.steps_run == 3 and resumed.step == 6
    assert resumed.losses == straight.losses
    a = from_pretrained(straight.checkpoint).state_dict()
    b = from_pretrained(resumed.checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A checkpoint of another mode is refused.
    with pytest.raises(ValueError, match="parametric"):
        train_synthesis(replace(config, parametric=True), tmp_path / "b", dataset=dataset, resume=True, progress=False)


def test_cli_trains_sims_and_parametric(
    tiny_vgg: Path, val_bank_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "synthesis", "--config", str(CONFIGS / "tiny.json"), "--bank", str(val_bank_path)]
    base += ["--vgg-weights", str(tiny_vgg), "--threads", "1", "--no-progress"]
    assert sims_main([*base, "--steps", "2", "--out", str(tmp_path / "sims")]) == 0
    assert sims_main([*base, "--steps", "2", "--out", str(tmp_path / "crn"), "--parametric"]) == 0
    sims, crn = read_metadata(tmp_path / "sims"), read_metadata(tmp_path / "crn")
    assert not sims["parametric"] and crn["parametric"]
    assert sims["step"] == crn["step"] == 2
    # Same seed, same data, same budget: only the canvas differs, so the weights do too.
    sims_net, crn_net = from_pretrained(tmp_path / "sims"), from_pretrained(tmp_path / "crn")
    assert any(not torch.equal(a, b) for a, b in zip(sims_net.parameters(), crn_net.parameters(), strict=True))
    # Resume to a larger step count from the CLI; without --resume the run directory is refused.
    assert sims_main([*base, "--steps", "3", "--out", str(tmp_path / "sims"), "--resume"]) == 0
    assert read_metadata(tmp_path / "sims")["step"] == 3
    assert sims_main([*base, "--steps", "4", "--out", str(tmp_path / "sims")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_bf16_channels_last_step(config: TrainSynthesisConfig, dataset: BlockCanvasDataset) -> None:
    fast = config.with_overrides(**{"train.precision": "bf16", "train.channels_last": True})
    trainer = SynthesisTrainer(fast, dataset)
    assert all(p.dtype == torch.bfloat16 for p in trainer.loss_fn.vgg.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay float32
    batch = collate([dataset[i] for i in range(2)])
    first = trainer.train_step(batch)
    with torch.no_grad():
        out = trainer.generate(trainer.to_device(batch))
    assert np.isfinite(first) and out.dtype == torch.float32 and out.shape == (2, 3, *SIZE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
