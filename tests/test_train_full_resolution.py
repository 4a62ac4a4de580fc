"""Training the canvas blend: full-resolution caches, the crop loss, the discriminator, warm start, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_bank import Bank
from synthesis.canvas.elision import KEPT
from synthesis.canvas.simulate import SimulatedCanvasDataset, write_canvas_cache
from synthesis.model_directory import from_pretrained, load_training_state, save_pretrained
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.training.synthesis import SynthesisTrainer, TrainSynthesisConfig, random_crop, train_synthesis

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CACHE_SIZE = (48, 64)
TINY = json.loads((REPO / "configs/synthesis/tiny.json").read_text())["model"]


@pytest.fixture(scope="module")
def cache(val_bank: Bank, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two variants of three val images at 48x64: elision band 0.05, then none."""
    out = tmp_path_factory.mktemp("cache") / "full"
    write_canvas_cache(val_bank, out, variants=2, size=CACHE_SIZE, images=[0, 1, 2], bands=(0.05, 0.0), progress=False)
    return out


def blend_config(vgg: Path, cache: Path, adversarial: bool = False) -> TrainSynthesisConfig:
    d = json.loads((REPO / "configs/synthesis/tiny.json").read_text())
    d["model"]["canvas_blend"] = True
    d["vgg"]["path"] = str(vgg)
    d["data"] = {"kind": "simulated", "cache_dir": str(cache), "options": {"full_resolution": True}}
    d["full_loss"] = {"weight": 1.0, "crop": [32, 32]}
    d["train"] |= {"steps": 4, "checkpoint_every": 2, "sample_every": 100, "blend_lr_scale": 10.0}
    if adversarial:
        d["adversarial"] = {"weight": 1.0, "feature_matching": 10.0, "scales": 2, "width": 8, "layers": 2}
    return TrainSynthesisConfig.from_dict(d)


def test_cache_stores_codes_and_bands_per_variant(cache: Path) -> None:
    ds = SimulatedCanvasDataset(cache, size=(24, 32), full_resolution=True)
    assert ds.info.bands == (0.05, 0.0) and len(ds) == 6
    paper, none = ds.load_stored(0), ds.load_stored(1)
    assert (paper["elision"] != KEPT).any() and (none["elision"] == KEPT).all()
    item = ds[0]
    assert item["canvas"].shape == (3, 24, 32) and item["full_canvas"].shape == (3, *CACHE_SIZE)
    kept = item["full_kept"][0].numpy().astype(bool)
    np.testing.assert_array_equal(kept, ~paper["missing"] & (paper["elision"] == KEPT))


def test_random_crop_takes_one_window_of_every_tensor() -> None:
    a = torch.arange(2 * 3 * 10 * 12).reshape(2, 3, 10, 12)
    b = a[:, 0] * 10  # (B, H, W), like a layout
    ca, cb = random_crop((a, b), (4, 5))
    assert ca.shape == (2, 3, 4, 5) and cb.shape == (2, 4, 5)
    torch.testing.assert_close(cb, ca[:, 0] * 10)
    whole, _ = random_crop((a, b), (20, 20))
    assert whole.shape == a.shape


@pytest.mark.parametrize("adversarial", [False, True])
def test_blend_training_resumes_exactly(tiny_vgg: Path, cache: Path, tmp_path: Path, adversarial: bool) -> None:
    config = blend_config(tiny_vgg, cache, adversarial)
    straight = train_synthesis(config, tmp_path / "a", progress=False)
    train_synthesis(config.with_overrides(**{"train.steps": 2}), tmp_path / "b", progress=False)
    resumed = train_synthesis(config, tmp_path / "b", resume=True, progress=False)
    assert resumed.losses == straight.losses and resumed.step == 4
    a, b = from_pretrained(straight.checkpoint), from_pretrained(resumed.checkpoint)
    assert a.config.canvas_blend and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    state = load_training_state(resumed.checkpoint)
    assert ("discriminator" in state) == adversarial
    # The head has its own, faster optimizer group.
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs == [config.train.lr, config.train.lr * 10.0]


def test_warm_start_keeps_the_old_layers_and_inits_the_head(tiny_vgg: Path, cache: Path, tiny_weights: Path) -> None:
    config = blend_config(tiny_vgg, cache)
    trainer = SynthesisTrainer(config, SimulatedCanvasDataset(cache, size=(24, 32), full_resolution=True))
    trainer.warm_start(tiny_weights)
    old = from_pretrained(tiny_weights).state_dict()
    new = trainer.model.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)
    assert trainer.model.to_blend is not None and float(trainer.model.to_blend.weight.detach().abs().sum()) == 0.0
    # Weights of another shape are refused, with the layer named.
    other = RefinementConfig.from_dict({**TINY, "encoder_widths": [4, 8, 16]})
    wrong = save_pretrained(CascadedRefinementNetwork.from_config(other), tiny_weights.parent / "wrong", {})
    with pytest.raises(ValueError, match="does not fit"):
        trainer.warm_start(wrong)


def test_full_loss_needs_full_resolution_samples(tiny_vgg: Path, cache: Path) -> None:
    config = blend_config(tiny_vgg, cache)
    trainer = SynthesisTrainer(config, SimulatedCanvasDataset(cache, size=(24, 32)))
    with pytest.raises(ValueError, match="full_loss needs"):
        trainer.train_step(trainer.next_batch())
