"""The layout refiner: encoding, forward shapes, refine_layout, one training step, checkpoints, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memory_bank import Bank
from memory_bank.classes import IGNORE
from memory_bank.errors import LayoutError
from synthesis.coarsen import CoarsenConfig
from synthesis.model_directory import CONFIG_FILE, WEIGHTS_FILE, from_pretrained, read_config, save_pretrained
from synthesis.networks.layout_refiner import (
    CoarseLayoutRefiner,
    LayoutRefiner,
    LayoutRefinerConfig,
    class_shares,
    refine_layout,
)
from synthesis.training.layout_refiner import (
    LayoutRefinerRunConfig,
    evaluate_layout_refiner,
    layout_confusion,
    make_batch,
    refine_loss,
    score_confusion,
    train_layout_refiner,
    train_step,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = {"num_classes": 5, "resolution": (16, 24), "widths": (6, 8, 8), "convs": 1}


def tiny_net(seed: int = 0) -> LayoutRefiner:
    torch.manual_seed(seed)
    return LayoutRefiner(**TINY)


def test_config_validation_and_round_trip() -> None:
    cfg = LayoutRefinerConfig(**TINY)
    assert cfg.scales == 3 and cfg.factor == 4 and cfg.in_channels == 6
    assert LayoutRefinerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        LayoutRefinerConfig(resolution=(18, 24), widths=(4, 4, 4))  # 18 not divisible by 4
    with pytest.raises(ValueError):
        LayoutRefinerConfig(num_classes=0)
    with pytest.raises(ValueError):
        LayoutRefinerConfig.from_dict({"num_classes": 3, "depth": 2})


def test_class_shares_has_an_unlabelled_channel_and_area_shares() -> None:
    labels = torch.tensor([[[0, 1, 255, 255], [0, 1, 255, 7]]])  # 7 >= num_classes counts as unlabelled
    hot = class_shares(labels, 3)
    assert hot.shape == (1, 4, 2, 4)
    torch.testing.assert_close(hot.sum(1), torch.ones(1, 2, 4))
    assert hot[0, 3, 1, 3] == 1 and hot[0, 3, 0, 2] == 1 and hot[0, 1, 0, 1] == 1
    small = class_shares(labels, 3, size=(1, 2))
    # Left half: two pixels of class 0, two of class 1; right half: all unlabelled.
    torch.testing.assert_close(small[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(small[0, :, 0, 1], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        class_shares(labels.float(), 3)


def test_forward_shapes() -> None:
    net = tiny_net()
    x = class_shares(torch.randint(0, 6, (2, 16, 24)), 5)
    assert net(x).shape == (2, 5, 16, 24)
    assert net.logits(torch.randint(0, 5, (1, 37, 53)).to(torch.uint8)).shape == (1, 5, 37, 53)
    assert net.logits(torch.randint(0, 5, (1, 37, 53)), out_size=(8, 12)).shape == (1, 5, 8, 12)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 5, 16, 24))  # one channel short
    with pytest.raises(ValueError):
        net(torch.zeros(1, 6, 18, 24))


@settings(max_examples=15, deadline=None)
@given(st.integers(5, 70), st.integers(5, 70), st.integers(0, 2**16), st.floats(0.0, 1.5))
def test_refine_layout_gives_class_ids_at_the_input_size(h: int, w: int, seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 1, 2, 3, 4, IGNORE], np.uint8), size=(h, w))
    out = refine_layout(tiny_net(), coarse, keep_threshold=threshold)
    assert out.shape == (h, w) and out.dtype == np.uint8
    assert out.max() < 5


def test_keep_threshold_fill_only_and_network_only() -> None:
    net = tiny_net(1)
    rng = np.random.default_rng(0)
    coarse = rng.choice(np.array([0, 1, 2, 3, 4, IGNORE], np.uint8), size=(32, 48))
    labelled = coarse != IGNORE
    filled = refine_layout(net, coarse, keep_threshold=0.0)
    np.testing.assert_array_equal(filled[labelled], coarse[labelled])
    free = refine_layout(net, coarse, keep_threshold=2.0)
    dense = net.logits(torch.from_numpy(coarse)[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(free, dense)
    np.testing.assert_array_equal(filled[~labelled], dense[~labelled])
    with pytest.raises(LayoutError):
        refine_layout(net, np.full((8, 8), 9, np.uint8))  # 9 is no class of a 5-class net
    with pytest.raises(LayoutError):
        refine_layout(net, np.zeros((8, 8), np.int64))


def test_one_training_step_lowers_the_loss() -> None:
    net = tiny_net(2)
    rng = np.random.default_rng(0)
    fine = np.kron(rng.integers(0, 5, (2, 4, 6)), np.ones((1, 8, 8), np.int64)).astype(np.uint8)
    fine[:, :2] = IGNORE
    coarse = fine.copy()
    coarse[:, ::3] = IGNORE
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = train_step(net, opt, coarse, fine)
    with torch.no_grad():
        after = float(refine_loss(net, coarse, fine))
    assert after < before


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = tiny_net(3)
    x = class_shares(torch.randint(0, 6, (1, 16, 24)), 5)
    d = save_pretrained(net, tmp_path / "ckpt", metadata={"step": 3})
    assert (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()
    assert json.loads((d / "sims.json").read_text()) == {"step": 3}
    assert read_config(d) == net.config
    back = from_pretrained(d)
    torch.testing.assert_close(back(x), net.eval()(x), rtol=0, atol=0)
    half = from_pretrained(save_pretrained(net, tmp_path / "half", dtype=torch.float16))
    torch.testing.assert_close(half(x), net(x), rtol=1e-2, atol=1e-2)
    bad = json.loads((d / CONFIG_FILE).read_text()) | {"_class_name": "Other"}
    (d / CONFIG_FILE).write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        read_config(d)
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing")


def test_pipeline_step_loads_and_refines(tmp_path: Path) -> None:
    net = tiny_net(4)
    step = CoarseLayoutRefiner.from_pretrained(save_pretrained(net, tmp_path / "ckpt"))
    coarse = np.full((30, 40), IGNORE, np.uint8)
    coarse[:15] = 2
    out = step(coarse)
    assert step.num_classes == 5 and out.shape == (30, 40) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:15], 2)  # the default keeps every labelled pixel
    np.testing.assert_array_equal(out, refine_layout(net, coarse))


def test_shipped_weights_refine_a_bundled_coarse_layout() -> None:
    from memory_bank.images import read_label

    weights, example = REPO / "weights" / "layout-refiner", REPO / "examples" / "coarse-layouts"
    coarse = read_label(sorted(example.glob("*.png"))[0])
    assert (coarse == IGNORE).mean() > 0.1
    out = CoarseLayoutRefiner.from_pretrained(weights)(coarse)
    assert out.shape == coarse.shape and out.max() < 11
    labelled = coarse != IGNORE
    np.testing.assert_array_equal(out[labelled], coarse[labelled])
    # The gaps are filled with the classes around them, not with one class everywhere.
    assert len(np.unique(out[~labelled])) >= 3


def test_layout_confusion_counts_unlabelled_predictions_as_wrong() -> None:
    fine = np.array([[0, 0, 1, 1, IGNORE]], np.uint8)
    pred = np.array([[0, IGNORE, 1, 0, 1]], np.uint8)
    s = score_confusion(layout_confusion(pred, fine, 2))
    assert s["pixel_accuracy"] == pytest.approx(2 / 4)
    # class 0: tp 1, fine 2, predicted 2 -> 1/3; class 1: tp 1, fine 2, predicted 1 -> 1/2.
    assert s["class_iou"] == pytest.approx([1 / 3, 1 / 2])
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_make_batch_is_a_function_of_seed_and_step() -> None:
    labels = np.kron(np.arange(12).reshape(3, 2, 2) % 4, np.ones((1, 16, 16), np.int64)).astype(np.uint8)
    a = make_batch(labels, CoarsenConfig(), 4, seed=1, step=5)
    b = make_batch(labels, CoarsenConfig(), 4, seed=1, step=5)
    c = make_batch(labels, CoarsenConfig(), 4, seed=1, step=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == a[1].shape == (4, 32, 32) and a[0].dtype == np.uint8
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_tiny_run_resumes_and_scores(val_bank: Bank, tmp_path: Path) -> None:
    cfg = LayoutRefinerRunConfig.load(REPO / "configs" / "layout-refiner" / "tiny.json")
    cfg = cfg.with_overrides(**{"train.steps": 2, "train.batch_size": 2})
    out = tmp_path / "run"
    first = train_layout_refiner(val_bank, out, cfg, progress=False)
    assert first.step == 2 and len(first.losses) == 2
    second = train_layout_refiner(val_bank, out, cfg.with_overrides(**{"train.steps": 3}), resume=True, progress=False)
    assert second.step == 3 and second.losses[:2] == first.losses
    model = from_pretrained(out)
    fines = list(np.asarray(val_bank.labels[:2]))
    scores = evaluate_layout_refiner(model, fines, cfg.coarsen, keep_thresholds=(0.0, 2.0))
    coarse, filled = scores["coarse"], scores["refined"][0.0]
    # Filling only the unlabelled pixels can only add correct pixels.
    assert filled["pixel_accuracy"] >= coarse["pixel_accuracy"]
    assert 0 < scores["coverage"] < 1
    with pytest.raises(ValueError):
        train_layout_refiner(
            val_bank, out, LayoutRefinerRunConfig.from_dict({"model": {"widths": [4, 4]}}), resume=True, progress=False
        )


def test_cli_trains_and_exports(val_bank_path: Path, tmp_path: Path) -> None:
    from synthesis.cli.train import app

    out, export = tmp_path / "run", tmp_path / "export"
    args = [
        "layout-refiner",
        "-c",
        str(REPO / "configs/layout-refiner/tiny.json"),
        "-b",
        str(val_bank_path),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "--export", str(export), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained to step 2" in result.output
    assert read_config(export).resolution == (24, 32)
