"""Evaluation metrics on constructed cases, and ``sims eval`` end to end on the sample val bank."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from memory_bank import Bank, DatasetError, SimsError
from sims.cli import main as sims_main
from synthesis.evaluation.image_sets import (
    FolderImages,
    LayoutToImage,
    PipelineImages,
    SynthesizedImages,
    items_from_bank,
    open_image_set,
    output_for,
)
from synthesis.evaluation.metrics import (
    SegmentationScores,
    confusion_matrix,
    iou_per_class,
    l1_error,
    mean_iou,
    pixel_accuracy,
)
from synthesis.evaluation.scoring import evaluate_image_sets
from synthesis.networks.segmenter import SegmentationNet

labels = arrays(
    np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.sampled_from([0, 1, 2, 3, 255])
)


@given(labels)
def test_perfect_prediction_scores_one(target: np.ndarray) -> None:
    pred = np.where(target == 255, 0, target)
    conf = confusion_matrix(pred, target, 4)
    assert conf.sum() == (target != 255).sum()
    if conf.sum():
        assert mean_iou(conf) == 1.0
        assert pixel_accuracy(conf) == 1.0
    else:
        assert np.isnan(mean_iou(conf)) and np.isnan(pixel_accuracy(conf))


def test_constructed_confusion_has_known_scores() -> None:
    target = np.array([[0, 0, 1, 1, 2, 255]])
    pred = np.array([[0, 1, 1, 1, 2, 0]])
    conf = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(conf[:3, :3], [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    # Class 0: 1 / (2 + 1 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1; class 3 absent from the target.
    iou = iou_per_class(conf)
    np.testing.assert_allclose(iou[:3], [1 / 2, 2 / 3, 1.0])
    assert np.isnan(iou[3])
    assert mean_iou(conf) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert pixel_accuracy(conf) == pytest.approx(4 / 5)


def test_class_only_predicted_is_not_averaged_but_costs_the_true_class() -> None:
    target = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 3])
    conf = confusion_matrix(pred, target, 4)
    assert mean_iou(conf) == pytest.approx(3 / 4)  # class 3 has no target pixels: NaN, left out
    assert np.isnan(iou_per_class(conf)[3])


@settings(max_examples=50)
@given(labels, st.integers(0, 2**32 - 1))
def test_ignored_pixels_do_not_count(target: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, target.shape)
    other = pred.copy()
    # Change the prediction on ignored pixels only, even to values outside the classes.
    other[target == 255] = 200
    np.testing.assert_array_equal(confusion_matrix(pred, target, 4), confusion_matrix(other, target, 4))


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 5]), 2)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([0, 1, 7]), np.zeros(3), 2)
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))


def test_scores_dataclass_and_dict() -> None:
    conf = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    s = SegmentationScores.from_confusion(conf)
    assert s.miou == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert s.to_dict(["a", "b"]) == {"miou": s.miou, "pixel_accuracy": 2 / 3, "class_iou": {"a": 0.5, "b": 0.5}}


def test_l1_error() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert l1_error(a, a) == 0.0
    assert l1_error(a, np.full_like(a, 255)) == 1.0
    b = a.copy()
    b[0, 0, 0] = 51  # one value of 48 off by 0.2
    assert l1_error(a, b) == pytest.approx(0.2 / 48)
    with pytest.raises(ValueError):
        l1_error(a, a[:2])


# ``sims eval`` end to end


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "segmenter"
    SegmentationNet(num_classes=11, widths=(4, 8), resolution=(24, 32)).save_pretrained(path)
    return path


def _write_set(directory: Path, bank: Bank, make) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for item in items_from_bank(bank):
        Image.fromarray(make(item)).save(directory / f"{item.name}.png")
    return directory


def test_real_photos_as_a_set_match_the_reference(val_bank: Bank, tiny_segmenter: Path) -> None:
    torch.set_num_threads(1)
    items = items_from_bank(val_bank, limit=4)
    copy: LayoutToImage = lambda layout: next(it.photo for it in items if it.layout is layout)  # noqa: E731
    report = evaluate_image_sets(
        items,
        [SynthesizedImages("copy", copy)],
        SegmentationNet.from_pretrained(tiny_segmenter),
        val_bank.classes,
        num_samples=2,
        progress=False,
    )
    ref, got = report.result("real photos"), report.result("copy")
    assert [r.name for r in report.results] == ["real photos", "copy"]  # same size: one reference row
    np.testing.assert_array_equal(ref.scores.confusion, got.scores.confusion)
    assert got.l1 == 0.0 and got.spectrum_distance == 0.0
    assert ref.l1 is None and ref.spectrum_distance > 0  # the even/odd noise floor
    assert len(got.samples) == 2 and got.predictions[0].shape == items[0].layout.shape


def test_sims_eval_cli_writes_the_report(val_bank: Bank, val_bank_path: Path, tiny_segmenter: Path, tmp_path: Path):
    torch.set_num_threads(1)
    small = _write_set(tmp_path / "small", val_bank, lambda it: np.asarray(Image.fromarray(it.photo).resize((64, 48))))
    lut = val_bank.classes.palette()
    flat = _write_set(tmp_path / "flat", val_bank, lambda it: lut[it.layout])
    out = tmp_path / "report"
    code = sims_main(
        [
            "eval",
            "--bank",
            str(val_bank_path),
            "--segmenter",
            str(tiny_segmenter),
            "--set",
            f"SIMS={small}",
            "--set",
            f"parametric={flat}",
            "--out",
            str(out),
            "--samples",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in data["results"]]
    assert names == ["real photos", "real photos at 48x64", "SIMS", "parametric"]
    rows = {r["name"]: r for r in data["results"]}
    assert rows["SIMS"]["size"] == [48, 64] and rows["parametric"]["size"] == [360, 480]
    assert 0 < rows["SIMS"]["l1"] < 0.05  # a resized photo is close to the photo
    assert rows["parametric"]["spectrum_distance"] > rows["SIMS"]["spectrum_distance"]
    assert all(0 <= r["miou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1 for r in data["results"])
    # Fine detail against real photos at the same size (48x64 here): a resized photo is about as detailed.
    assert rows["SIMS"]["fine_detail_ratio"] == pytest.approx(1.0, abs=0.15)
    assert rows["real photos"]["fine_detail_ratio"] == 1.0 == rows["real photos at 48x64"]["fine_detail_ratio"]
    # KID against the full-size real photos; none for those themselves. (The random tiny segmenter's
    # features make the values meaningless here: KID itself is tested in test_eval_kid.py.)
    assert rows["real photos"]["kid_x1000"] is None and rows["real photos at 48x64"]["kid_x1000"] is not None
    assert all(rows[n]["kid_x1000"] is not None and rows[n]["kid_se_x1000"] >= 0 for n in ("SIMS", "parametric"))
    md = (out / "report.md").read_text()
    assert "| **SIMS** | 48x64 |" in md and "| **parametric** | 360x480 |" in md
    assert "KID ×10³" in md and "not Inception" in md and "not comparable" in md
    for png in ("spectra.png", "class_iou.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["gallery"] == "gallery/index.html" and (out / "gallery" / "index.html").is_file()


def test_sims_eval_cli_runs_checkpoints_with_the_paste_row(
    val_bank: Bank, val_bank_path: Path, tiny_segmenter: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    """A SIMS checkpoint through the pipeline (at the layout's size), a paste row over a folder set, the gallery."""
    torch.set_num_threads(1)
    lut = val_bank.classes.palette()
    flat = _write_set(tmp_path / "flat", val_bank, lambda it: lut[it.layout])
    out = tmp_path / "report"
    args = ["eval", "--bank", str(val_bank_path), "--segmenter", str(tiny_segmenter), "--memory-bank"]
    args += [str(val_bank_path), "--set", f"SIMS={tiny_weights}", "--set", f"flat={flat}", "--paste", "flat"]
    args += ["--elision-band", "0.02", "--limit", "3", "--samples", "1", "--out", str(out), "--no-progress"]
    assert sims_main(args) == 0
    data = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert list(rows) == ["real photos", "SIMS", "flat", "paste (canvas over flat)"]
    assert all(r["size"] == [360, 480] for r in rows.values())  # nothing at the network's 24x32
    # The canvases (memory bank = the val bank: each layout finds its own photo's segments) are real
    # pixels: pasted over flat colours they bring back detail and lower L1.
    assert rows["paste (canvas over flat)"]["fine_detail_ratio"] > rows["flat"]["fine_detail_ratio"]
    assert rows["paste (canvas over flat)"]["l1"] < rows["flat"]["l1"]
    index = out / "gallery" / "index.html"
    page = index.read_text()
    assert "http" not in page and page.count("<tr>") >= 3
    for link in re.findall(r'src="([^"]*)"', page):
        assert not Path(link).is_absolute() and (index.parent / link).is_file()
    assert "canvas (SIMS)" in page and "paste (canvas over flat)" in page
    md = (out / "report.md").read_text()
    assert "| **paste (canvas over flat)** | 360x480 |" in md and "(gallery/index.html)" in md


def test_sims_eval_cli_rejects_a_paste_without_base_or_canvases(
    val_bank: Bank, val_bank_path: Path, tiny_segmenter: Path, tmp_path: Path
) -> None:
    lut = val_bank.classes.palette()
    flat = _write_set(tmp_path / "flat", val_bank, lambda it: lut[it.layout])
    args = ["eval", "--bank", str(val_bank_path), "--segmenter", str(tiny_segmenter), "--set", f"flat={flat}"]
    args += ["--out", str(tmp_path / "out"), "--no-progress", "--limit", "2", "--paste"]
    assert sims_main([*args, "nope"]) != 0
    assert sims_main([*args, "flat"]) != 0  # no SIMS checkpoint set to take canvases from
    assert not (tmp_path / "out").exists()


def test_image_sets_report_missing_files_and_bad_folders(val_bank: Bank, tmp_path: Path) -> None:
    item = items_from_bank(val_bank, limit=1)[0]
    with pytest.raises(DatasetError, match=item.name):
        FolderImages("x", tmp_path).image_for(item)
    with pytest.raises(DatasetError, match="neither"):
        open_image_set("x", tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SimsError, match="--memory-bank"):
        open_image_set("x", tmp_path)
    bad = SynthesizedImages("bad", lambda layout: np.zeros(layout.shape, np.float32))
    with pytest.raises(DatasetError, match="uint8"):
        bad.image_for(item)


def test_checkpoint_sets_synthesize_in_process(val_bank: Bank, tiny_weights: Path) -> None:
    """A synthesis checkpoint as an image set: the product pipeline, images at the layout's size, with canvases."""
    items = items_from_bank(val_bank, limit=2)
    images = open_image_set("SIMS", tiny_weights, val_bank)
    assert isinstance(images, PipelineImages) and images.builds_canvases
    out = [output_for(images, item) for item in items]
    for o, item in zip(out, items, strict=True):
        assert o.image.shape == (*item.layout.shape, 3) and o.image.dtype == np.uint8
        assert o.canvas is not None and o.provenance is not None and o.provenance.shape == item.layout.shape
        assert set(np.unique(o.provenance[o.provenance >= 0]).tolist()) <= {s.segment_id for s in o.segments}
    # Deterministic: the same layout gives the same image (computed again, not the cached last item).
    np.testing.assert_array_equal(images.image_for(items[0]), out[0].image)
    assert images.image_for(items[0]) is images.image_for(items[0])  # the current item is kept, not redone


def test_checkpoint_sets_pass_the_elision_options_on(val_bank: Bank, tiny_weights: Path) -> None:
    from synthesis.canvas.elision import PAPER_ELISION, TEST_ELISION

    item = items_from_bank(val_bank, limit=1)[0]
    default = output_for(open_image_set("SIMS", tiny_weights, val_bank), item)
    paper = output_for(open_image_set("SIMS", tiny_weights, val_bank, elision=PAPER_ELISION), item)
    assert default.canvas is not None and paper.canvas is not None
    # The default is the test-time one (no band): nothing elided; the paper's elides.
    assert TEST_ELISION.band == 0.0 and not (default.canvas.elision != 0).any()
    assert (paper.canvas.elision != 0).any()
    assert (default.provenance >= 0).sum() > (paper.provenance >= 0).sum()
