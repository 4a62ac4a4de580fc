"""Simulated training canvases, their cache and dataset contract, grids and the ``sims canvas`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memory_bank import Bank
from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
from synthesis.canvas.elision import BLACK, WHITE, ElisionConfig
from synthesis.canvas.grid import GridRow, render_grid
from synthesis.canvas.simulate import (
    CACHE_MANIFEST,
    ColorDonors,
    SimulatedCanvasDataset,
    lab,
    resize_sample,
    simulate_canvas,
    transfer_color,
    write_canvas_cache,
)
from synthesis.cli.canvas import app


@pytest.fixture(scope="module")
def donors(builder: CanvasBuilder) -> ColorDonors:
    return ColorDonors.from_bank(builder.segments)  # type: ignore[arg-type]


def image(builder: CanvasBuilder, i: int) -> tuple[np.ndarray, np.ndarray]:
    a = builder.segments.image(i)  # type: ignore[attr-defined]
    return a.label, a.photo


def test_stencil_uses_own_photo_inside_retrieved_masks(val_bank: Bank, builder: CanvasBuilder) -> None:
    layout, photo = image(builder, 1)
    c = simulate_canvas(builder, layout, photo, seed=0, image_id=1, color_transfer=0.0)
    assert c.segments and all(s.image_id != 1 for s in c.segments)
    kept = c.provenance >= 0
    # Kept pixels are the training photo's own pixels, and provenance names its own segments.
    assert (c.canvas[kept] == photo[kept]).all()
    own = builder.segments.segment_at(1, builder.segments.image(1).components)  # type: ignore[attr-defined]
    assert (c.provenance[kept] == own[kept]).all()
    # Each shown pixel lies inside the retrieved (stencil) mask of its component's segment.
    union = np.zeros(layout.shape, bool)
    for s in c.segments:
        union |= builder.segments.segment(s.segment_id).mask
    assert union[kept].all()
    assert not c.canvas[c.missing].any()
    assert (c.canvas[c.elision == WHITE] == 255).all() and c.missing[c.elision == BLACK].all()


def test_simulated_is_seeded(builder: CanvasBuilder, donors: ColorDonors) -> None:
    layout, photo = image(builder, 2)
    a = simulate_canvas(builder, layout, photo, seed=4, image_id=2, donors=donors)
    b = simulate_canvas(builder, layout, photo, seed=4, image_id=2, donors=donors)
    assert (a.canvas == b.canvas).all() and a.segments == b.segments
    c = simulate_canvas(builder, layout, photo, seed=5, image_id=2, donors=donors)
    assert (a.canvas != c.canvas).any()


def test_color_transfer_changes_only_recoloured_pixels(builder: CanvasBuilder, donors: ColorDonors) -> None:
    layout, photo = image(builder, 3)
    opts = {"seed": 0, "image_id": 3}
    plain = simulate_canvas(builder, layout, photo, color_transfer=0.0, **opts)
    every = simulate_canvas(builder, layout, photo, donors=donors, color_transfer=1.0, **opts)
    # Same stencils, same elision: only colours differ.
    assert (plain.missing == every.missing).all() and (plain.elision == every.elision).all()
    kept = plain.provenance >= 0
    assert (plain.canvas[kept] != every.canvas[kept]).any(axis=1).mean() > 0.5


def test_transfer_color_matches_statistics() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(40, 200, size=(5000, 3)).astype(np.uint8)
    target_mean, target_std = np.array([60.0, 10.0, -20.0], np.float32), np.array([8.0, 4.0, 5.0], np.float32)
    out = lab(transfer_color(pixels, target_mean, target_std))
    assert np.allclose(out.mean(axis=0), target_mean, atol=1.0)
    assert np.allclose(out.std(axis=0), target_std, atol=1.0)
    assert transfer_color(pixels[:0], target_mean, target_std).shape == (0, 3)


def test_color_donors(val_bank: Bank, builder: CanvasBuilder, donors: ColorDonors) -> None:
    assert donors.mean.shape == (val_bank.num_segments, 3) and donors.std.dtype == np.float32
    seg = val_bank.segment(4)
    x = lab(seg.crop[seg.crop_mask])
    assert np.allclose(donors.mean[4], x.mean(axis=0), atol=1e-2)
    assert np.allclose(donors.std[4], x.std(axis=0), atol=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = donors.draw(8, 0, rng)
        assert d is None or (donors.class_id[d] == 8 and donors.image_id[d] != 0)
    assert donors.draw(250, None, rng) is None


def test_resize_sample_modes() -> None:
    layout = np.zeros((8, 8), np.uint8)
    layout[:, 4:] = 7
    canvas = np.zeros((8, 8, 3), np.uint8)
    canvas[:, 4:] = 200
    missing = np.zeros((8, 8), bool)
    missing[:4] = True
    lay, can, mis, _ = resize_sample(layout, canvas, missing, canvas, (4, 2))
    assert lay.tolist() == [[0, 7]] * 4 and set(np.unique(lay)) <= {0, 7}
    assert mis.dtype == bool and mis[:2].all() and not mis[2:].any()
    assert can.shape == (4, 2, 3) and (can[:, 1] == 200).all() and (can[:, 0] == 0).all()


def test_cache_and_dataset_contract(val_bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    info = write_canvas_cache(val_bank, out, variants=2, size=(48, 64), seed=0, images=[0, 3], progress=False)
    assert info.complete and info.size == (48, 64)
    assert sorted(p.name for p in out.glob("*.npz")) == [
        "000000_00.npz",
        "000000_01.npz",
        "000003_00.npz",
        "000003_01.npz",
    ]
    assert not list(out.glob(".*tmp"))
    ds = SimulatedCanvasDataset(out)
    assert len(ds) == 4
    item = ds[1]
    assert set(item) == {"layout", "canvas", "missing", "photo"}
    assert item["layout"].dtype == torch.int64 and item["layout"].shape == (48, 64)
    assert item["canvas"].dtype == torch.float32 and item["canvas"].shape == (3, 48, 64)
    assert item["missing"].dtype == torch.float32 and item["missing"].shape == (1, 48, 64)
    assert item["photo"].dtype == torch.float32 and item["photo"].shape == (3, 48, 64)
    for key in ("canvas", "photo", "missing"):
        assert float(item[key].min()) >= 0.0 and float(item[key].max()) <= 1.0
    assert set(torch.unique(item["missing"]).tolist()) <= {0.0, 1.0}
    assert set(torch.unique(item["layout"]).tolist()) <= set(range(11)) | {255}
    # Missing pixels show no canvas at the stored size (nearest for the mask, area for images: edges may mix).
    assert float(item["canvas"][:, item["missing"][0] > 0].mean()) < 0.2
    # Variants differ; resizing on the fly; batching with a DataLoader.
    assert not torch.equal(ds[0]["canvas"], ds[1]["canvas"])
    small = SimulatedCanvasDataset(out, size=(24, 32), variants=1)
    assert len(small) == 2 and small[1]["canvas"].shape == (3, 24, 32) and small[1]["layout"].shape == (24, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["canvas"].shape == (4, 3, 48, 64) and batch["layout"].dtype == torch.int64
    # The photo is the image's own photo.
    photo = np.asarray(val_bank.photos[3])
    _, _, _, expect = resize_sample(np.asarray(val_bank.labels[3]), photo, np.zeros((360, 480), bool), photo, (48, 64))
    assert torch.allclose(ds[2]["photo"], torch.from_numpy(expect).permute(2, 0, 1).float() / 255)


def test_cache_resumes_and_refuses_other_recipes(val_bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    write_canvas_cache(val_bank, out, variants=1, size=(24, 32), images=[1], progress=False, color_transfer=0.0)
    f = out / "000001_00.npz"
    before = f.stat().st_mtime_ns
    write_canvas_cache(val_bank, out, variants=1, size=(24, 32), images=[1], progress=False, color_transfer=0.0)
    assert f.stat().st_mtime_ns == before  # kept, not rewritten
    with pytest.raises(ValueError, match="other settings"):
        write_canvas_cache(val_bank, out, variants=1, size=(48, 64), images=[1], progress=False)
    # An incomplete cache is refused by the dataset.
    manifest = out / CACHE_MANIFEST
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        SimulatedCanvasDataset(out)
    with pytest.raises(FileNotFoundError):
        SimulatedCanvasDataset(tmp_path)


def test_render_grid(val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[0])
    photo = np.asarray(val_bank.photos[0])
    rows = [GridRow(layout, photo, photo, photo)] * 2
    g = render_grid(rows, val_bank.classes, scale=0.25)
    h, w = 90, 120
    assert g.dtype == np.uint8 and g.shape == (22 + 2 * h + 2, 4 * w + 3 * 2, 3)
    # The layout tile uses the class colours.
    sky = val_bank.classes[int(layout[0, 0])].color
    assert tuple(g[22, 0]) == sky
    with pytest.raises(ValueError):
        render_grid([], val_bank.classes)


def test_cli_grid_and_simulate(val_bank_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    png = tmp_path / "grid.png"
    r = runner.invoke(
        app, ["grid", "--bank", str(val_bank_path), "--out", str(png), "--images", "0,5", "--scale", "0.25"]
    )
    assert r.exit_code == 0, r.output
    assert png.is_file() and "images [0, 5]" in r.output
    cache = tmp_path / "cache"
    args = ["simulate", "--bank", str(val_bank_path), "--out", str(cache), "--variants", "1", "--size", "24x32"]
    r = runner.invoke(app, [*args, "--images", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(SimulatedCanvasDataset(cache)) == 1


def test_options_reach_retrieval_and_elision(val_bank: Bank) -> None:
    b = CanvasBuilder.from_bank(val_bank, options=CanvasOptions(k=1, elision=ElisionConfig(white_fraction=0.0)))
    layout, photo = image(b, 4)
    c = simulate_canvas(b, layout, photo, seed=9, image_id=4, color_transfer=0.0)
    d = simulate_canvas(b, layout, photo, seed=10, image_id=4, color_transfer=0.0)
    # k = 1: the pick is always the best match, whatever the seed; no white pixels.
    assert [s.segment_id for s in c.segments] == [s.segment_id for s in d.segments]
    assert not (c.elision == WHITE).any()
