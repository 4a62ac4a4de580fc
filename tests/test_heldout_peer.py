"""Issue 28: the held-out-drive split, the SPADE peer, seam jitter, the hole refiner, seam and hole scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from indexers.readers import create_reader
from memory_bank import Bank, DatasetError, open_bank
from memory_bank.sequences import SequenceFilter, sequence_of
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.seam_jitter import SeamJitter
from synthesis.canvas.seams import DRAWN, seam_pairs
from synthesis.canvas.simulate import SimulatedCanvasDataset, simulate_canvas, write_canvas_cache
from synthesis.evaluation.seams import CanvasRegions, SeamTally
from synthesis.model_directory import from_pretrained, save_pretrained
from synthesis.networks.blend import HoleRefiner, render_full_resolution
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.networks.spade import SpadeConfig, SpadeGenerator
from synthesis.pipeline import ImageGenerator
from synthesis.training.synthesis import SynthesisTrainer, TrainSynthesisConfig

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = json.loads((REPO / "configs/synthesis/tiny.json").read_text())
TINY_SPADE = {
    "num_classes": 11,
    "resolution": [24, 32],
    "base_width": 4,
    "max_width": 16,
    "hidden": 8,
    "upsamplings": 3,
}


# 0. The held-out-drive split
def test_sequence_rule_and_filter() -> None:
    assert sequence_of("camvid", "train/0006R0_f02370.png") == "0006R0"
    assert sequence_of("cityscapes", "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png") == "aachen"
    with pytest.raises(DatasetError, match="no sequences"):
        sequence_of("ade20k", "images/training/ADE_train_00000001.jpg")
    f = SequenceFilter.parse(exclude="0006R0, 0001TP")
    assert f.exclude == ("0006R0", "0001TP") and f.keeps("0016E5") and not f.keeps("0006R0")
    assert SequenceFilter.parse(include="0006R0").keeps("0006R0") and not SequenceFilter(("a",)).keeps("b")
    with pytest.raises(DatasetError, match="both included and excluded"):
        SequenceFilter(("a",), ("a",))


def test_check_held_out_names_the_leak() -> None:
    from memory_bank.sequences import bank_sequences, check_held_out

    memory = bank_sequences(["camvid"] * 2, ["train/0001TP_006690.png", "val/0016E5_07959.png"])
    assert check_held_out(["0006R0"], layouts=["0006R0"] * 3, memory=memory) == (3, 2)
    with pytest.raises(DatasetError, match="memory bank holds 1 images of the held-out sequences"):
        check_held_out(["0016E5"], layouts=["0016E5"], memory=memory)
    with pytest.raises(DatasetError, match="outside the held-out"):
        check_held_out(["0006R0"], layouts=["0006R0", "0001TP"])


def test_reader_holds_out_a_drive(sample_root: Path) -> None:
    everything = create_reader("camvid", sample_root, ["train"])
    held_out = create_reader("camvid", sample_root, ["train"], SequenceFilter(include=("0006R0",)))
    rest = create_reader("camvid", sample_root, ["train"], SequenceFilter(exclude=("0006R0",)))
    names = {r.image_path.name for r in everything.refs}
    kept = {r.image_path.name for r in held_out.refs}
    others = {r.image_path.name for r in rest.refs}
    assert kept and others and kept | others == names and not kept & others
    assert all(n.startswith("0006R0_") for n in kept) and not any(n.startswith("0006R0_") for n in others)
    with pytest.raises(DatasetError, match="left by the sequence filter"):
        create_reader("camvid", sample_root, ["val"], SequenceFilter(include=("0006R0",)))


def test_build_records_the_filter_and_cli_takes_it(sample_root: Path, tmp_path: Path) -> None:
    from indexers.cli import app

    result = CliRunner().invoke(
        app,
        ["build", "-d", "camvid", "-r", str(sample_root), "-o", str(tmp_path / "b"), "--exclude-sequences", "0006R0",
         "--workers", "1", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[without 0006R0]" in result.output
    bank = open_bank(tmp_path / "b")
    source = bank.manifest.sources[0]
    assert source.exclude_sequences == ("0006R0",) and source.sequences == ()
    files = bank.images.column("source_file").to_pylist()
    assert files and not any("0006R0" in f for f in files)
    reread = type(source).from_dict(source.to_dict())
    assert reread == source


# 1. The SPADE peer
def spade_config(vgg: Path, cache: Path) -> TrainSynthesisConfig:
    d = json.loads(json.dumps(TINY))
    d["model"] = TINY_SPADE
    d["parametric"] = True
    d["vgg"]["path"] = str(vgg)
    d["data"] = {"kind": "simulated", "cache_dir": str(cache), "options": {"full_resolution": True}}
    d["full_loss"] = {"weight": 1.0, "crop": [32, 32]}
    d["adversarial"] = {"weight": 1.0, "feature_matching": 10.0, "scales": 2, "width": 8, "layers": 2}
    d["train"] |= {"steps": 4, "checkpoint_every": 2, "sample_every": 100, "lr": 0.002, "betas": [0.0, 0.9]}
    return TrainSynthesisConfig.from_dict(d)


@pytest.fixture(scope="module")
def cache(val_bank: Bank, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two jittered variants of three val images at 48x64."""
    out = tmp_path_factory.mktemp("cache") / "jittered"
    write_canvas_cache(
        val_bank, out, variants=2, size=(48, 64), images=[0, 1, 2], jitter=SeamJitter(probability=1.0), progress=False
    )
    return out


@torch.no_grad()
def test_spade_generator_shapes_range_and_layout_only() -> None:
    torch.manual_seed(0)
    net = SpadeGenerator.from_config(SpadeConfig.from_dict(TINY_SPADE))
    layout = torch.randint(0, 11, (2, 24, 32))
    layout[0, :4] = 255  # unlabelled
    rgb, raw = net.forward_with_blend(layout, torch.rand(2, 3, 24, 32), torch.zeros(2, 1, 24, 32))
    assert raw is None and rgb.shape == (2, 3, 24, 32) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    # Layout only: another canvas gives the same image.
    again, _ = net.forward_with_blend(layout, torch.zeros(2, 3, 24, 32), torch.ones(2, 1, 24, 32))
    net.eval()
    a, b = net(layout), net(layout)
    torch.testing.assert_close(a, b)
    assert again.shape == rgb.shape
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(1, 20, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*upsamplings"):
        SpadeConfig(num_classes=11, resolution=(20, 30), upsamplings=3)


def test_spade_training_step_lowers_loss_and_round_trips(tiny_vgg: Path, cache: Path, tmp_path: Path) -> None:
    config = spade_config(tiny_vgg, cache)
    ds = SimulatedCanvasDataset(cache, size=(24, 32), full_resolution=True)
    trainer = SynthesisTrainer(config, ds)
    assert isinstance(trainer.model, SpadeGenerator) and trainer.discriminator is not None
    batch = trainer.to_device({k: v for k, v in trainer.next_batch().items()})
    assert not batch["canvas"].any()  # parametric: the peer never sees a canvas
    torch.manual_seed(1)
    before = float(trainer.loss(batch))
    for _ in range(6):
        torch.manual_seed(1)  # the same crop each time
        trainer.model.train()
        trainer.optimizer.zero_grad()
        loss = trainer.loss(batch)
        loss.backward()
        trainer.optimizer.step()
    torch.manual_seed(1)
    assert float(trainer.loss(batch)) < before
    # Save / load through a model directory, and the pipeline's generator runs it like any synthesis network.
    trainer.model.eval()
    out = save_pretrained(trainer.model, tmp_path / "spade", {"parametric": True})
    loaded = from_pretrained(out)
    assert isinstance(loaded, SpadeGenerator) and loaded.config == trainer.model.config
    layout = batch["layout"][:1]
    torch.testing.assert_close(loaded(layout), trainer.model(layout))
    generator = ImageGenerator.from_pretrained(out)
    assert generator.parametric
    image = generator(np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), bool))
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8


# 2. Seam-aware canvases
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(4, 30), st.integers(4, 30)),
)
def test_jitter_stays_inside_its_mask(seed: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    stencil = rng.random(shape) < 0.4
    draw = SeamJitter(probability=1.0).draw(rng)
    assert draw is not None and max(abs(v) for v in draw.shift) <= 3
    out = draw.apply(photo, stencil)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert (out[~stencil] == photo[~stencil]).all()
    assert SeamJitter(probability=0.0).draw(rng) is None


def test_jittered_canvas_changes_kept_pixels_only_and_not_the_target(val_bank: Bank) -> None:
    builder = CanvasBuilder.from_bank(val_bank)
    arrays = builder.segments.image(1)  # type: ignore[attr-defined]
    layout, photo = arrays.label, arrays.photo.copy()
    opts = {"seed": 0, "image_id": 1, "color_transfer": 0.0}
    plain = simulate_canvas(builder, layout, photo, **opts)
    jittered = simulate_canvas(builder, layout, photo, jitter=SeamJitter(probability=1.0), **opts)
    assert (photo == arrays.photo).all()  # the target is untouched
    assert (plain.missing == jittered.missing).all() and (plain.elision == jittered.elision).all()
    kept = plain.provenance >= 0
    assert (plain.canvas[~kept] == jittered.canvas[~kept]).all()
    assert (plain.canvas[kept] != jittered.canvas[kept]).any(axis=1).mean() > 0.3
    # Without jitter the canvas is the one made before jitter existed (its own random stream).
    again = simulate_canvas(builder, layout, photo, jitter=SeamJitter(probability=0.0), **opts)
    assert (again.canvas == plain.canvas).all()


def test_cache_records_jitter_and_serves_full_layout(cache: Path) -> None:
    ds = SimulatedCanvasDataset(cache, size=(24, 32), full_resolution=True)
    assert ds.info.jitter == SeamJitter(probability=1.0).to_dict()
    item = ds[0]
    assert item["full_layout"].shape == (48, 64) and item["full_layout"].dtype == torch.int64
    stored = ds.load_stored(0)
    assert (item["full_layout"].numpy() == stored["layout"]).all()


# 3. Holes at full resolution
def test_hole_refiner_starts_as_identity_and_keeps_kept_pixels() -> None:
    torch.manual_seed(0)
    refiner = HoleRefiner(11, (8, 8))
    image = torch.rand(1, 3, 20, 24)
    weight = (torch.rand(1, 1, 20, 24) > 0.5).float()
    hot = torch.nn.functional.one_hot(torch.randint(0, 11, (1, 20, 24)), 11).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(refiner(image, weight, hot), image)
    torch.nn.init.normal_(refiner.out.weight)
    out = refiner(image, weight, hot)
    kept = weight.bool().expand_as(image)
    torch.testing.assert_close(out[kept], image[kept])
    assert not torch.allclose(out[~kept], image[~kept])
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_network_with_hole_refiner_renders_at_full_resolution() -> None:
    cfg = RefinementConfig.from_dict({**TINY["model"], "canvas_blend": True, "hole_refiner_widths": [4, 4]})
    net = CascadedRefinementNetwork.from_config(cfg).eval()
    assert net.hole_refiner is not None
    rgb, raw = net.forward_with_blend(
        torch.zeros(1, 24, 32, dtype=torch.long), torch.rand(1, 3, 24, 32), torch.zeros(1, 1, 24, 32)
    )
    hot = torch.zeros(1, 11, 48, 64)
    out = render_full_resolution(net, rgb, raw, torch.rand(1, 3, 48, 64), torch.ones(1, 1, 48, 64), hot)
    assert out.image.shape == (1, 3, 48, 64)
    with pytest.raises(ValueError, match="two widths"):
        RefinementConfig.from_dict({**TINY["model"], "hole_refiner_widths": [4]})


# 4. Seam score and hole detail
def test_seam_score_is_one_on_a_photo_against_itself_and_above_one_at_a_step() -> None:
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(120, 12, (40, 60, 3)), 0, 255).astype(np.uint8)
    layout = np.zeros((40, 60), np.uint8)  # one class
    provenance = np.full((40, 60), -1, np.int64)
    provenance[:, :30], provenance[:, 30:] = 5, 9  # two segments ...
    regions = CanvasRegions.from_canvas(layout, provenance, {5: 100, 9: 200})  # ... of two photos
    assert len(regions.pairs) == 40 and not regions.holes.any()
    same = SeamTally()
    same.add(photo, photo, regions)
    assert same.seam_score == pytest.approx(1.0)
    composite = photo.copy()
    composite[:, 30:] = np.clip(composite[:, 30:].astype(int) + 40, 0, 255).astype(np.uint8)  # a brightness step
    step = SeamTally()
    step.add(composite, photo, regions)
    assert step.seam_score > 1.5
    # Two segments of one photo are no seam; nor is a class boundary.
    assert len(CanvasRegions.from_canvas(layout, provenance, {5: 100, 9: 100}).pairs) == 0
    two_classes = layout.copy()
    two_classes[:, 30:] = 1
    assert len(seam_pairs(two_classes, np.where(provenance == 5, 100, 200))) == 0
    with pytest.raises(ValueError, match="did not place"):
        CanvasRegions.from_canvas(layout, provenance, {5: 100})


def test_hole_detail_is_low_for_an_upsampled_drawing() -> None:
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    layout = np.zeros((40, 60), np.uint8)
    provenance = np.full((40, 60), 3, np.int64)
    provenance[10:30, 10:40] = -1  # a hole, drawn by the network
    regions = CanvasRegions.from_canvas(layout, provenance, {3: 7})
    assert regions.holes.sum() == 20 * 30 and len(regions.pairs) > 0 and DRAWN == -1
    import cv2

    soft = cv2.resize(
        cv2.resize(photo, (15, 10), interpolation=cv2.INTER_AREA), (60, 40), interpolation=cv2.INTER_LINEAR
    )
    real, drawn = SeamTally(), SeamTally()
    real.add(photo, photo, regions)
    drawn.add(soft, photo, regions)
    assert real.hole_detail == pytest.approx(1.0) and drawn.hole_detail < 0.2
    assert real.hole_share == pytest.approx(600 / 2400)


# 5. Honest pictures: /synthesize takes the images to exclude (the Studio sends its source image)
def test_synthesize_options_take_excluded_images() -> None:
    from retrieval_service.api.requests import parse_ids
    from retrieval_service.http_errors import ApiError
    from retrieval_service.types import SynthesizeOptions

    assert parse_ids("3, 17") == [3, 17] and parse_ids("") == []
    with pytest.raises(ApiError) as e:
        parse_ids("3,x")
    assert e.value.status == 422 and "exclude_images" in str(e.value.message)
    assert SynthesizeOptions.model_validate({"exclude_images": [4, 2]}).exclude_images == (4, 2)
    with pytest.raises(ValueError):
        SynthesizeOptions.model_validate({"exclude_images": [-1]})
