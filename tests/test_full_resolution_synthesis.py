"""Output at the layout's resolution: real canvas pixels survive at their own resolution; elision options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_bank import Bank
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.elision import BLACK, KEPT, WHITE, ElisionConfig
from synthesis.evaluation.spectrum import high_frequency_fraction
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.pipeline import ImageGenerator, SynthesisPipeline

REPO = Path(__file__).resolve().parents[1]
TINY = json.loads((REPO / "configs/synthesis/tiny.json").read_text())["model"]
SHIPPED = REPO / "weights/synthesis"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_generator(blend: bool) -> ImageGenerator:
    torch.manual_seed(0)
    return ImageGenerator(
        CascadedRefinementNetwork.from_config(RefinementConfig.from_dict({**TINY, "canvas_blend": blend}))
    )


def photo_round_trip(gen: ImageGenerator, bank: Bank, index: int) -> tuple[float, float]:
    """L1 (0..1) and fine-detail ratio of the output for a canvas that is the layout's own photo, all kept."""
    photo, layout = np.asarray(bank.photos[index]), np.asarray(bank.labels[index])
    none = np.zeros(layout.shape, bool)
    out = gen(layout, photo, none, ~none)
    assert out.shape == photo.shape and out.dtype == np.uint8
    l1 = float(np.abs(out.astype(np.float32) - photo).mean() / 255)
    return l1, high_frequency_fraction(out) / high_frequency_fraction(photo)


def test_a_real_photo_canvas_comes_back_at_full_resolution(val_bank: Bank) -> None:
    l1, ratio = photo_round_trip(tiny_generator(blend=True), val_bank, 0)
    assert l1 < 0.05 and 0.8 < ratio < 1.1, (l1, ratio)


def test_an_upscaled_output_fails_the_round_trip(val_bank: Bank) -> None:
    # The same check on a network without the blend head (its 24x32 output is upsampled).
    l1, ratio = photo_round_trip(tiny_generator(blend=False), val_bank, 0)
    assert not (l1 < 0.05 and 0.8 < ratio < 1.1), (l1, ratio)


def test_shipped_network_keeps_a_real_photo(val_bank: Bank) -> None:
    gen = ImageGenerator.from_pretrained(SHIPPED)
    if not gen.model.config.canvas_blend:
        pytest.fail(f"{SHIPPED} has no canvas blend head: its output would be an upscale")
    for index in (0, 5):
        l1, ratio = photo_round_trip(gen, val_bank, index)
        assert l1 < 0.06 and 0.7 < ratio < 1.2, (index, l1, ratio)


@pytest.mark.parametrize("blend", [True, False])
@pytest.mark.parametrize("parametric", [True, False])
def test_every_generator_answers_at_the_layout_size(val_bank: Bank, blend: bool, parametric: bool) -> None:
    gen = tiny_generator(blend)
    gen.parametric = parametric
    layout = np.asarray(val_bank.labels[2])
    canvas = np.asarray(val_bank.photos[2])
    kept = np.random.default_rng(0).random(layout.shape) < 0.5
    result = gen.generate(layout, canvas, ~kept, kept)
    assert result.image.shape == (*layout.shape, 3) and result.image.dtype == np.uint8
    assert result.canvas_weight.shape == layout.shape
    assert result.canvas_weight.min() >= 0.0 and result.canvas_weight.max() <= 1.0
    if parametric or not blend:
        assert result.canvas_weight.max() == 0.0
    else:
        assert result.canvas_weight[~kept].max() == 0.0 and result.canvas_weight[kept].max() > 0.5


@pytest.fixture(scope="module")
def pipeline(val_bank: Bank) -> SynthesisPipeline:
    return SynthesisPipeline(CanvasBuilder.from_bank(val_bank), tiny_generator(blend=True))


def test_elision_options_change_the_canvas_as_documented(pipeline: SynthesisPipeline, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[4])
    settings = [(0.0, 0.8), (0.02, 0.8), (0.05, 0.8), (0.05, 0.0), (0.05, 1.0)]
    runs = {band_rate: pipeline(layout, seed=0, elision=ElisionConfig(*band_rate)) for band_rate in settings}
    codes = {key: out.canvas.elision for key, out in runs.items()}
    # No band: nothing elided, every pasted pixel kept.
    assert (codes[(0.0, 0.8)] == KEPT).all()
    # A wider band elides more; the paper's 0.05 keeps less of the canvas than 0.02.
    assert (codes[(0.05, 0.8)] != KEPT).sum() > (codes[(0.02, 0.8)] != KEPT).sum() > 0
    kept = {key: int(out.canvas.kept.sum()) for key, out in runs.items()}
    assert kept[(0.05, 0.8)] < kept[(0.02, 0.8)] < kept[(0.0, 0.8)]
    # Rate 0: no white pixels inside segments, the black band outside objects stays.
    assert not (codes[(0.05, 0.0)] == WHITE).any() and (codes[(0.05, 0.0)] == BLACK).any()
    # Rate 0.8 whitens 80% of the inside band that rate 1 whitens whole (black, drawn after, takes a few).
    share = (codes[(0.05, 0.8)] == WHITE).sum() / (codes[(0.05, 1.0)] == WHITE).sum()
    assert abs(share - 0.8) < 0.05, share
    for out in runs.values():
        assert out.image.shape == (*layout.shape, 3) and out.elision is not None
    assert runs[(0.02, 0.8)].elision == ElisionConfig(0.02, 0.8)
