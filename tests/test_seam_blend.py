"""Issue 28: the gradient-domain seam blend (synthesis/canvas/seams.py) and its place in the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import Bank
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.seams import DRAWN, SeamBlend, blend_seams, seam_pairs, source_map
from synthesis.evaluation.seams import CanvasRegions, SeamTally
from synthesis.pipeline import ImageGenerator, SynthesisPipeline


def textured(rng: np.random.Generator, shape: tuple[int, int], level: float) -> np.ndarray:
    """A noisy grey photo around ``level`` (uint8)."""
    return np.clip(rng.normal(level, 10, (*shape, 3)), 0, 255).astype(np.uint8)


def seam_score(image: np.ndarray, photo: np.ndarray, layout: np.ndarray, source: np.ndarray) -> float:
    regions = CanvasRegions(seam_pairs(layout, source), source == DRAWN)
    tally = SeamTally()
    tally.add(image, photo, regions)
    return tally.seam_score


def test_two_photos_with_a_brightness_step_meet_without_one() -> None:
    rng = np.random.default_rng(0)
    photo = textured(rng, (40, 80), 110)
    layout = np.zeros((40, 80), np.uint8)
    source = np.full((40, 80), 3, np.int64)
    source[:, 40:] = 8  # the right half comes from another photo ...
    composite = photo.copy()
    composite[:, 40:] = np.clip(photo[:, 40:].astype(int) + 50, 0, 255)  # ... 50 levels brighter
    before = seam_score(composite, photo, layout, source)
    after_image = blend_seams(composite, layout, source, SeamBlend(iterations=40))
    after = seam_score(after_image, photo, layout, source)
    assert before > 10 and after < 2.0, (before, after)
    # The texture stays: the pixel-to-pixel variation away from the seam is the photo's.
    far = after_image[:, :20].astype(float)
    assert np.std(np.diff(far, axis=1)) == pytest.approx(np.std(np.diff(photo[:, :20].astype(float), axis=1)), rel=0.05)


def photo_beside_a_drawing(seed: int, drawn_level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(photo, image, layout, source): one class; the image's right part is a flat drawing at ``drawn_level``."""
    photo = textured(np.random.default_rng(seed), (40, 80), 100)
    layout = np.zeros((40, 80), np.uint8)
    source = np.full((40, 80), 5, np.int64)
    source[:, 50:] = DRAWN
    image = photo.copy()
    image[:, 50:] = drawn_level
    return photo, image, layout, source


def test_the_drawing_moves_to_the_photo_and_the_photo_stays() -> None:
    photo, image, layout, source = photo_beside_a_drawing(1, 160)  # a flat, too-bright drawing
    out = blend_seams(image, layout, source)
    kept = source != DRAWN
    np.testing.assert_array_equal(out[kept], image[kept])  # only photo-photo seams move real pixels
    assert abs(int(out[:, 50].mean()) - int(photo[:, 45:50].mean())) < 8  # the drawing meets the photo
    assert seam_score(out, photo, layout, source) < 0.2 * seam_score(image, photo, layout, source)
    # It fades with distance: far from the photo the drawing is nearer what the network drew.
    assert out[:, 79].mean() > out[:, 50].mean()


def test_a_smooth_drawing_gains_the_grain_of_the_photo_beside_it() -> None:
    photo, image, layout, source = photo_beside_a_drawing(3, 100)  # the right colour, but flat
    colour_only = blend_seams(image, layout, source, SeamBlend(texture=False))
    grained = blend_seams(image, layout, source, SeamBlend(texture_gain=1.0))

    def grain(a: np.ndarray) -> float:  # spatial spread per channel
        return float(a.astype(float).std(axis=(0, 1)).mean())

    near = (slice(None), slice(51, 60))
    assert grain(grained[near]) > 5.0 > 2 * grain(colour_only[near])  # detail from the photo's mirror image ...
    assert grain(grained[near]) <= grain(photo[:, 40:50]) * 1.1  # ... at gain 1 never past the photo's
    np.testing.assert_array_equal(grained[source != DRAWN], image[source != DRAWN])
    # The default gain (4 in energy) stops at twice the photo's spread.
    assert grain(blend_seams(image, layout, source)[near]) <= 2 * grain(photo[:, 40:50]) * 1.1
    # At gain 1 a drawing already as detailed as the photo gets none.
    detailed = photo.copy()
    texture_only = SeamBlend(photos=False, drawn=False, texture_gain=1.0)
    np.testing.assert_array_equal(blend_seams(detailed, layout, source, texture_only), detailed)


def test_a_texture_gain_paints_more_grain_and_leaves_the_photo() -> None:
    photo, image, layout, source = photo_beside_a_drawing(3, 100)
    near = (slice(None), slice(51, 60))

    def energy(gain: float) -> float:
        out = blend_seams(image, layout, source, SeamBlend(photos=False, drawn=False, texture_gain=gain))
        np.testing.assert_array_equal(out[source != DRAWN], image[source != DRAWN])
        return float(out[near].astype(float).var(axis=(0, 1)).mean())

    photo_energy = float(photo[:, 40:50].astype(float).var(axis=(0, 1)).mean())
    assert energy(1.0) <= 1.2 * photo_energy < energy(4.0)  # gain 1 stops at the photo's grain, 4 goes past it
    with pytest.raises(ValueError, match="bad seam blend"):
        SeamBlend(texture_gain=0.0)


def test_classes_never_mix_and_no_seam_means_no_change() -> None:
    rng = np.random.default_rng(2)
    image = textured(rng, (30, 60), 120)
    layout = np.zeros((30, 60), np.uint8)
    layout[:, 30:] = 1
    source = np.where(layout == 0, 4, 7).astype(np.int64)  # a class boundary, not a seam
    np.testing.assert_array_equal(blend_seams(image, layout, source), image)
    source[:15, :30] = 9  # a seam inside class 0 only
    image[:15, :30] = np.clip(image[:15, :30].astype(int) + 60, 0, 255)
    out = blend_seams(image, layout, source)
    np.testing.assert_array_equal(out[layout == 1], image[layout == 1])
    assert not np.array_equal(out[layout == 0], image[layout == 0])
    np.testing.assert_array_equal(blend_seams(image, layout, source, SeamBlend(photos=False, drawn=False)), image)
    with pytest.raises(ValueError, match="differ in size"):
        blend_seams(image, layout[:, :10], source)
    with pytest.raises(ValueError, match="bad seam blend"):
        SeamBlend(side=0)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(4, 24),
    st.integers(4, 24),
    st.integers(1, 3),
    st.integers(1, 4),
)
def test_any_canvas_keeps_shape_and_unseamed_classes(seed: int, h: int, w: int, classes: int, sources: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    layout = rng.integers(0, classes, (h, w)).astype(np.uint8)
    source = rng.integers(-1, sources, (h, w)).astype(np.int64)
    out = blend_seams(image, layout, source)
    assert out.shape == image.shape and out.dtype == np.uint8
    pairs = seam_pairs(layout, source)
    seamed = set(layout[pairs[:, 0], pairs[:, 1]].tolist())
    untouched = ~np.isin(layout, list(seamed))
    np.testing.assert_array_equal(out[untouched], image[untouched])


def test_source_map_names_the_photo_of_each_kept_pixel() -> None:
    provenance = np.array([[-1, 10, 11], [12, 12, -1]])
    got = source_map(provenance, {10: 1, 11: 1, 12: 4})
    np.testing.assert_array_equal(got, [[DRAWN, 1, 1], [4, 4, DRAWN]])
    with pytest.raises(ValueError, match="did not place"):
        source_map(provenance, {10: 1})


def test_the_pipeline_blends_after_the_network_and_keeps_the_image_before(val_bank: Bank, tiny_weights: Path) -> None:
    builder = CanvasBuilder.from_bank(val_bank)
    layout = np.asarray(val_bank.labels[2])
    on = SynthesisPipeline(builder, ImageGenerator.from_pretrained(tiny_weights))(layout, seed=1, exclude_images=[2])
    plain = ImageGenerator.from_pretrained(tiny_weights)
    plain.seam_blend = None
    off = SynthesisPipeline(builder, plain)(layout, seed=1, exclude_images=[2])
    assert off.before_seam_blend is None and on.before_seam_blend is not None
    np.testing.assert_array_equal(on.before_seam_blend, off.image)
    sources = on.canvas.sources
    np.testing.assert_array_equal(on.image, blend_seams(off.image, layout, sources))
    assert len(seam_pairs(layout, sources)) > 0 and not np.array_equal(on.image, off.image)


def test_the_worker_setting_turns_the_blend_off(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthesis.worker.runtime import load_networks
    from synthesis.worker.settings import WorkerSettings

    off = {"refine_weights": "off", "transform_weights": "off", "ordering_weights": "off"}
    assert load_networks(WorkerSettings(weights=tiny_weights, **off)).generator.seam_blend == SeamBlend()
    monkeypatch.setenv("SIMS_WORKER_SEAM_BLEND", "false")
    assert load_networks(WorkerSettings(weights=tiny_weights, **off)).generator.seam_blend is None


def test_the_ablation_row_gives_the_image_before_the_blend() -> None:
    from memory_bank import DatasetError
    from synthesis.evaluation.image_sets import EvalItem, SetOutput, UnblendedImages, unblended_name

    class Base:
        name = "SIMS"

        def __init__(self, before: np.ndarray | None) -> None:
            self.before = before

        def image_for(self, item: EvalItem) -> np.ndarray:
            return np.zeros((4, 6, 3), np.uint8)

        def output_for(self, item: EvalItem) -> SetOutput:
            return SetOutput(self.image_for(item), None, self.before)

    item = EvalItem(0, "x", np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8))
    before = np.full((4, 6, 3), 7, np.uint8)
    row = UnblendedImages(unblended_name("SIMS"), Base(before))
    assert row.name == "SIMS without seam blend"
    np.testing.assert_array_equal(row.image_for(item), before)
    with pytest.raises(DatasetError, match="SIMS gave no before seam blend for x"):
        UnblendedImages("u", Base(None)).image_for(item)
