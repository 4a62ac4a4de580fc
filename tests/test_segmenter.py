"""The segmentation probe: shapes, checkpoints, augmentation, one step of learning, a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_bank import Bank
from synthesis.model_directory import export_float16, from_pretrained
from synthesis.networks.segmenter import SegmentationNet, SegmenterConfig
from synthesis.training.harness import latest_checkpoint
from synthesis.training.optim import warmup_cosine
from synthesis.training.segmenter import (
    SegmenterRunConfig,
    SegmenterTrainConfig,
    TrainingImages,
    class_weights,
    train_segmenter,
    train_step,
)

TINY = {"num_classes": 5, "widths": (4, 8, 8), "resolution": (16, 24)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny() -> SegmentationNet:
    torch.manual_seed(0)
    return SegmentationNet(**TINY)


def test_forward_and_predict_shapes() -> None:
    model = _tiny()
    assert model(torch.zeros(2, 3, 16, 24)).shape == (2, 5, 16, 24)
    images = np.random.default_rng(0).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    logits = model.predict_logits(images, out_size=(60, 80))
    assert logits.shape == (3, 5, 60, 80) and logits.dtype == torch.float32
    labels = model.predict_labels(images)  # default: the input size
    assert labels.shape == (3, 30, 40) and labels.dtype == np.uint8 and labels.max() < 5
    assert model.predict_labels(images[0]).shape == (1, 30, 40)
    assert model.training  # inference leaves the mode as it found it


def test_bad_inputs_and_configs_are_rejected() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="multiples"):
        model(torch.zeros(1, 3, 15, 24))
    with pytest.raises(ValueError, match="N, H, W, 3"):
        model.preprocess(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="multiple"):
        SegmenterConfig(widths=(4, 8, 8), resolution=(18, 24))
    with pytest.raises(ValueError, match="names"):
        SegmenterConfig(num_classes=2, class_names=("a",))


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_checkpoint_round_trip(tmp_path: Path, dtype: torch.dtype | None) -> None:
    model = _tiny()
    # Train mode once so BatchNorm's running statistics differ from their defaults.
    model(torch.randn(2, 3, 16, 24))
    model.save_pretrained(tmp_path / "ckpt", dtype=dtype)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["widths"] == [4, 8, 8]
    loaded = SegmentationNet.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    x = torch.randn(1, 3, 16, 24)
    model.eval()
    with torch.no_grad():
        want, got = model(x), loaded(x)
    if dtype is None:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no segmenter checkpoint"):
        SegmentationNet.from_pretrained(tmp_path)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch() -> None:
    model = _tiny()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 24, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (4, 16, 24)).astype(np.uint8)
    labels[:, :2] = 255
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_step(model, optimizer, images, labels)
    second = train_step(model, optimizer, images, labels)
    assert np.isfinite(first) and second < first


def test_augmentation_keeps_photo_and_label_aligned() -> None:
    # Each pixel's colour encodes its label, so any misaligned crop or flip shows.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (3, 20, 30)).astype(np.uint8)
    labels[0, 0, :5] = 255
    code = (labels.astype(np.int64) * 40 % 256).astype(np.uint8)
    data = TrainingImages(np.repeat(code[..., None], 3, axis=-1), labels)
    # At the photos' own size and no zoom, crops are exact copies (flipped or not): no resampling blurs the check.
    x, y = data.sample(np.random.default_rng(1), 32, (20, 30), max_zoom=1.0, jitter=0.0)
    np.testing.assert_array_equal(x[..., 0], (y.astype(np.int64) * 40 % 256).astype(np.uint8))
    flipped = [any(np.array_equal(yi, lab[:, ::-1]) and not np.array_equal(yi, lab) for lab in labels) for yi in y]
    assert 0 < sum(flipped) < len(y)  # both flipped and unflipped samples occur
    x, y = data.sample(np.random.default_rng(2), 4, (16, 24), max_zoom=1.5, jitter=0.1, low_res_prob=0.5)
    assert x.shape == (4, 16, 24, 3) and x.dtype == np.uint8 and y.shape == (4, 16, 24)
    assert set(np.unique(y)) <= set(range(5)) | {255}
    # Half-resolution crops keep the labels exact but blur the photo: fewer distinct pixel values.
    # (A tiny probability draws the same random numbers as 1.0, so both batches show the same crops.)
    sharp, y1 = data.sample(np.random.default_rng(3), 8, (20, 30), max_zoom=1.0, jitter=0.0, low_res_prob=1e-12)
    soft, y2 = data.sample(np.random.default_rng(3), 8, (20, 30), max_zoom=1.0, jitter=0.0, low_res_prob=1.0)
    np.testing.assert_array_equal(y1, y2)
    assert (
        not np.array_equal(sharp, soft)
        and np.abs(np.diff(soft.astype(int), axis=2)).mean() < np.abs(np.diff(sharp.astype(int), axis=2)).mean()
    )


def test_class_weights_and_schedule() -> None:
    w = class_weights(np.array([0.5, 0.3, 0.2, 0.0]), balance=1.0)
    np.testing.assert_allclose(w, [0.6, 1.0, 1.5, 1.0])  # median 0.3; absent classes get 1
    np.testing.assert_allclose(class_weights(np.array([0.9, 0.1]), balance=0.0), [1.0, 1.0])
    config = SegmenterTrainConfig(steps=100, warmup_steps=10, lr=1.0)
    assert warmup_cosine(0, config) == pytest.approx(0.1)
    assert warmup_cosine(10, config) == pytest.approx(1.0)
    assert warmup_cosine(100, config) == pytest.approx(0.01)


def test_training_runs_checkpoints_and_resumes(val_bank: Bank, tmp_path: Path) -> None:
    base = {"resolution": (16, 24), "widths": (4, 8), "batch_size": 2, "checkpoint_every": 2, "eval_every": 0}
    out = tmp_path / "run"
    first = train_segmenter(val_bank, out, SegmenterRunConfig(SegmenterTrainConfig(steps=2, **base)), progress=False)
    assert first.step == 2 and len(first.losses) == 2 and latest_checkpoint(out) is not None
    resumed = train_segmenter(
        val_bank,
        out,
        SegmenterRunConfig(SegmenterTrainConfig(steps=3, **base)),
        val_bank=val_bank,
        resume=True,
        progress=False,
    )
    assert resumed.step == 3 and resumed.losses[:2] == first.losses
    scores = json.loads((out / "val_scores.json").read_text())
    assert scores["step"] == 3 and 0 <= scores["miou"] <= 1
    assert resumed.scores["miou"] == scores["miou"]
    shipped = export_float16(out, tmp_path / "fp16")
    assert from_pretrained(shipped).config.class_names == tuple(val_bank.classes.names)
    with pytest.raises(ValueError, match="another resolution"):
        bigger = SegmenterRunConfig(SegmenterTrainConfig(steps=4, **{**base, "resolution": (32, 48)}))
        train_segmenter(val_bank, out, bigger, resume=True)
