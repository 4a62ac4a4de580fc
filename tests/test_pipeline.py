"""The synthesis pipeline (layout -> canvas -> network -> image) and the HTTP adapters of synthesis.remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SYNTHESIS
from fastapi.testclient import TestClient

from memory_bank import IGNORE, Bank, LayoutError
from memory_bank.images import read_label
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient
from retrieval_service.engine import RetrievalEngine
from retrieval_service.types import RetrievalOptions
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.segment_cache import CachedSegments
from synthesis.canvas.simulate import resize_sample
from synthesis.networks.blend import upsample
from synthesis.networks.layout_refiner import CoarseLayoutRefiner
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.pipeline import ImageGenerator, SynthesisPipeline
from synthesis.remote import RemoteRetriever, RemoteSegments, bank_identity, remote_builder, to_result

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipeline(val_bank: Bank, tiny_weights: Path) -> SynthesisPipeline:
    return SynthesisPipeline.from_bank(val_bank, tiny_weights)


@pytest.fixture(scope="module")
def http(val_bank_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        yield c


@pytest.fixture(scope="module")
def client(http: TestClient) -> RetrievalClient:
    return RetrievalClient(http=http)


def test_generator_feeds_the_network_as_training_does(tiny_weights: Path) -> None:
    gen = ImageGenerator.from_pretrained(tiny_weights)
    assert gen.resolution == (24, 32) and not gen.parametric
    rng = np.random.default_rng(0)
    layout = rng.integers(0, 11, (360, 480)).astype(np.uint8)
    layout[:40] = IGNORE
    canvas = rng.integers(0, 256, (360, 480, 3)).astype(np.uint8)
    missing = rng.random((360, 480)) < 0.3
    out = gen(layout, canvas, missing)
    assert out.shape == (360, 480, 3) and out.dtype == np.uint8
    # The training path: the cache's resize, then the dataset's tensors; a network without the
    # blend head comes back upsampled to the layout's size.
    lay, can, mis, _ = resize_sample(layout, canvas, missing, canvas, (24, 32))
    with torch.no_grad():
        want = gen.model(
            torch.from_numpy(lay.astype(np.int64))[None],
            torch.from_numpy(can).permute(2, 0, 1)[None].float() / 255.0,
            torch.from_numpy(mis.astype(np.float32))[None, None],
        )
        want = upsample(want, (360, 480))[0]
    np.testing.assert_array_equal(out, (want.permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy())


def test_parametric_generator_ignores_the_canvas(tiny_weights: Path) -> None:
    gen = ImageGenerator.from_pretrained(tiny_weights)
    para = ImageGenerator(gen.model, parametric=True)
    layout = np.full((48, 64), 3, np.uint8)
    a = para(layout, np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), bool))
    b = para(layout, np.full((48, 64, 3), 200, np.uint8), np.zeros((48, 64), bool))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(gen(layout, np.full((48, 64, 3), 200, np.uint8), np.zeros((48, 64), bool)), a)


def test_pipeline_output_is_consistent(pipeline: SynthesisPipeline, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[2])
    out = pipeline(layout, seed=0)
    assert out.image.shape == (360, 480, 3) and out.image.dtype == np.uint8
    assert out.bank_version == val_bank.version and out.layout.shape == layout.shape
    assert set(out.timings) == {"retrieve", "canvas", "network", "seam_blend", "total"}
    prov = out.provenance
    used = set(np.unique(prov[prov >= 0]).tolist())
    assert used and used <= {s.segment_id for s in out.segments}
    # Every canvas pixel with a provenance is that segment's photo pixel (identity aligner).
    image_of = val_bank.column("image_id")
    ys, xs = np.nonzero(prov >= 0)
    for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 50)]:
        photo = np.asarray(val_bank.photos[int(image_of[prov[y, x]])])
        np.testing.assert_array_equal(out.canvas.canvas[y, x], photo[y, x])
    # Reproducible, and seeds give variety.
    again = pipeline(layout, seed=0)
    np.testing.assert_array_equal(again.image, out.image)
    other = pipeline(layout, seed=1)
    assert not np.array_equal(other.provenance, prov)


def test_k_one_ignores_the_seed_for_segments(pipeline: SynthesisPipeline, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[4])
    a, b = pipeline(layout, k=1, seed=0), pipeline(layout, k=1, seed=7, mode="exact")
    assert [s.segment_id for s in a.segments] == [s.segment_id for s in b.segments]
    assert pipeline.builder.options.k == 5  # the default builder is untouched
    with pytest.raises(ValueError, match="k must be"):
        pipeline(layout, k=0)


def test_layout_errors(pipeline: SynthesisPipeline) -> None:
    with pytest.raises(LayoutError, match="working resolution"):
        pipeline(np.zeros((36, 48), np.uint8))
    bad = np.zeros((360, 480), np.uint8)
    bad[0, 0] = 40
    with pytest.raises(LayoutError):
        pipeline(bad)
    with pytest.raises(LayoutError, match="refiner"):
        pipeline(np.zeros((360, 480), np.uint8), coarse=True)


def test_coarse_layouts_are_refined_first(val_bank: Bank, tiny_weights: Path) -> None:
    refiner = CoarseLayoutRefiner.from_pretrained(REPO / "weights/layout-refiner")
    pipe = SynthesisPipeline.from_bank(val_bank, tiny_weights, refiner=refiner)
    coarse = read_label(REPO / "examples/coarse-layouts/0016E5_07959_coarse.png")
    assert (coarse == IGNORE).mean() > 0.1
    out = pipe(coarse, coarse=True, seed=0)
    assert not (out.layout == IGNORE).any()
    labelled = coarse != IGNORE
    np.testing.assert_array_equal(out.layout[labelled], coarse[labelled])  # fill-only refiner keeps the user's labels
    assert "refine" in out.timings and out.image.shape == (360, 480, 3)


def test_network_must_fit_the_bank(val_bank: Bank, tiny_weights: Path) -> None:
    gen = ImageGenerator.from_pretrained(tiny_weights)
    small = CascadedRefinementNetwork.from_config(RefinementConfig.from_dict({**TINY_SYNTHESIS, "num_classes": 5}))
    with pytest.raises(ValueError, match="5 classes"):
        SynthesisPipeline(CanvasBuilder.from_bank(val_bank), ImageGenerator(small))
    SynthesisPipeline(CanvasBuilder.from_bank(val_bank), gen)


# The HTTP adapters


def test_remote_retriever_gives_the_engine_result(client: RetrievalClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[5])
    options = RetrievalOptions(k=3, mode="exact", seed=3, exclude_images=(5,))
    remote = RemoteRetriever(client)
    got = remote.retrieve(layout, options)
    want = RetrievalEngine.from_bank(val_bank).retrieve(layout, options)
    assert got.components == want.components and got.bank_version == want.bank_version
    assert remote.pin.version == val_bank.version
    assert "prepare" in got.timings and got.timings["prepare"] < 10  # seconds, converted from ms
    response = client.retrieve(layout, k=3, mode="exact", seed=3, exclude_images=[5])
    assert to_result(response).components == got.components
    with pytest.raises(ValueError, match="candidates"):
        remote.retrieve(layout, RetrievalOptions(candidates=64))


def test_remote_segments_are_the_bank_segments(client: RetrievalClient, val_bank: Bank) -> None:
    classes, config, resolution = bank_identity(client.bank())
    assert classes == val_bank.classes and config == val_bank.config and resolution == val_bank.resolution
    remote = RemoteSegments(client, resolution, max_segments=2)
    local = CachedSegments(val_bank)
    for sid in (0, 17, val_bank.num_segments - 1, 17):
        a, b = remote.segment_pixels(sid), local.segment_pixels(sid)
        assert (a.segment_id, a.image_id, a.class_id) == (b.segment_id, b.image_id, b.class_id)
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.mask, b.mask)
        seg, ref = remote.segment(sid), val_bank.segment(sid)
        assert (seg.bbox, seg.context_box, seg.area) == (ref.bbox, ref.context_box, ref.area)
        np.testing.assert_array_equal(seg.crop, ref.crop)
        assert (seg.context == IGNORE).all()  # not served over HTTP
    assert len(remote._cache) == 2


def test_remote_canvas_equals_in_process_canvas(client: RetrievalClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[1])
    builder = remote_builder(client)
    remote = builder(layout, seed=4)
    cached = {sid for _, sid in builder.segments._cache}  # prefetched together on the first read
    assert {s.segment_id for s in remote.segments} <= cached and not builder.retriever.pin.pending
    local = CanvasBuilder.from_bank(val_bank)(layout, seed=4)
    np.testing.assert_array_equal(remote.canvas, local.canvas)
    np.testing.assert_array_equal(remote.provenance, local.provenance)
    np.testing.assert_array_equal(remote.missing, local.missing)
    assert remote.segments == local.segments and remote.bank_version == local.bank_version == val_bank.version
