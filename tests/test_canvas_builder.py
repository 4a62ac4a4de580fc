"""The canvas pipeline on the bundled sample bank: shapes, provenance, determinism, missing pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memory_bank import IGNORE, Bank, LayoutError
from retrieval_service.engine import RetrievalEngine
from retrieval_service.types import ComponentResult, RetrievalOptions, RetrievalResult, Retriever, Status
from synthesis.canvas.builder import Canvas, CanvasBuilder, CanvasOptions
from synthesis.canvas.elision import BLACK, WHITE, ElisionConfig, inside_band
from synthesis.canvas.order_rule import LayoutOrderer
from synthesis.canvas.protocols import (
    Aligner,
    BatchAligner,
    IdentityAligner,
    Orderer,
    SegmentSource,
)
from synthesis.canvas.segment_cache import CachedSegments
from synthesis.networks.transform import TransformAligner, TransformConfig, TransformNet


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[0])


def assert_provenance_matches(bank: Bank, canvas: Canvas) -> None:
    """Every pixel with a provenance is that segment's own pixel, at its place in its source photo."""
    source = CachedSegments(bank)
    for sid in np.unique(canvas.provenance[canvas.provenance >= 0]):
        seg = source.segment(int(sid))
        sel = canvas.provenance == sid
        assert seg.mask[sel].all()
        photo = source.image(seg.image_id).photo
        assert (canvas.canvas[sel] == photo[sel]).all()


def test_protocols_are_met(val_bank: Bank, builder: CanvasBuilder) -> None:
    assert isinstance(RetrievalEngine.from_bank(val_bank), Retriever)
    assert isinstance(val_bank, SegmentSource) and isinstance(builder.segments, SegmentSource)
    assert isinstance(IdentityAligner(), Aligner) and isinstance(LayoutOrderer(), Orderer)


def test_canvas_shapes_dtypes_and_invariants(val_bank: Bank, builder: CanvasBuilder, layout: np.ndarray) -> None:
    c = builder(layout, seed=0, exclude_images=(0,))
    h, w = val_bank.resolution
    assert c.canvas.shape == (h, w, 3) and c.canvas.dtype == np.uint8
    assert c.missing.shape == (h, w) and c.missing.dtype == bool
    assert c.provenance.shape == (h, w) and c.provenance.dtype == np.int64
    assert c.elision.shape == (h, w) and c.elision.dtype == np.uint8
    assert not c.canvas.flags.writeable
    assert c.segments and all(s.image_id != 0 for s in c.segments)
    assert [s.rank for s in c.segments] == list(range(len(c.segments)))
    # Missing pixels are black and have no provenance; white ones are elided, not missing.
    assert not c.canvas[c.missing].any()
    assert (c.provenance[c.missing] == -1).all()
    white = c.elision == WHITE
    assert (c.canvas[white] == 255).all() and not c.missing[white].any() and (c.provenance[white] == -1).all()
    assert c.missing[c.elision == BLACK].all()
    assert (c.provenance >= 0).sum() > 0.2 * h * w
    # Segments painted in the canvas are those listed.
    assert set(np.unique(c.provenance[c.provenance >= 0])) <= {s.segment_id for s in c.segments}
    assert_provenance_matches(val_bank, c)
    assert {"retrieve", "read_align", "order", "compose", "elide", "total"} <= set(c.timings)


def test_white_fraction_close_to_80_percent(val_bank: Bank, layout: np.ndarray) -> None:
    # Without elision the provenance map is the piece map; the band is computed from it.
    plain = CanvasBuilder.from_bank(
        val_bank, object_classes=(), options=CanvasOptions(elision=ElisionConfig(white_fraction=0.0))
    )(layout, seed=3, exclude_images=(0,))
    assert not (plain.elision != 0).any()
    band = inside_band(plain.provenance, ElisionConfig().radius(layout.shape[0]))
    elided = CanvasBuilder.from_bank(val_bank, object_classes=())(layout, seed=3, exclude_images=(0,))
    white = elided.elision == WHITE
    assert not (white & ~band).any()
    assert white.sum() / band.sum() == pytest.approx(0.8, abs=0.01)
    # With the black band around objects, what stays white is still 80% of the band it leaves.
    c = CanvasBuilder.from_bank(val_bank)(layout, seed=3, exclude_images=(0,))
    left = band & (c.elision != BLACK)
    assert ((c.elision == WHITE) & left).sum() / left.sum() == pytest.approx(0.8, abs=0.03)


def test_same_seed_same_canvas(builder: CanvasBuilder, layout: np.ndarray) -> None:
    a = builder(layout, seed=5, exclude_images=(0,))
    b = builder(layout, seed=5, exclude_images=(0,))
    assert (a.canvas == b.canvas).all() and (a.provenance == b.provenance).all() and a.segments == b.segments
    c = builder(layout, seed=6, exclude_images=(0,))
    assert (a.canvas != c.canvas).any()


class HttpLikeRetriever:
    """Only the public ``retrieve`` (no shared query), as a remote client would be."""

    def __init__(self, engine: RetrievalEngine) -> None:
        self.engine = engine

    def retrieve(self, layout: np.ndarray, options: RetrievalOptions | None = None) -> RetrievalResult:
        return self.engine.retrieve(layout, options)


def test_retriever_without_query_sharing_gives_same_canvas(val_bank: Bank, builder: CanvasBuilder) -> None:
    layout = np.asarray(val_bank.labels[2])
    other = CanvasBuilder.from_bank(val_bank, retriever=HttpLikeRetriever(builder.retriever))  # type: ignore[arg-type]
    a, b = builder(layout, seed=1), other(layout, seed=1)
    assert (a.canvas == b.canvas).all() and a.segments == b.segments


class DropClass:
    """Pretends the bank has no segments of one class."""

    def __init__(self, engine: RetrievalEngine, class_id: int) -> None:
        self.engine, self.class_id = engine, class_id

    def retrieve(self, layout: np.ndarray, options: RetrievalOptions | None = None) -> RetrievalResult:
        r = self.engine.retrieve(layout, options)
        comps = tuple(
            ComponentResult(c.component_id, c.class_id, c.bbox, c.area, Status.CLASS_NOT_IN_BANK)
            if c.class_id == self.class_id
            else c
            for c in r.components
        )
        return RetrievalResult(comps, r.bank_version, r.mode, r.timings, r.scored)


def test_missing_class_leaves_missing_pixels(val_bank: Bank, builder: CanvasBuilder, layout: np.ndarray) -> None:
    road = 3
    b = CanvasBuilder.from_bank(val_bank, retriever=DropClass(builder.retriever, road))  # type: ignore[arg-type]
    c = b(layout, seed=0, exclude_images=(0,))
    assert all(s.class_id != road for s in c.segments)
    assert any(status == "class_not_in_bank" for _, status in c.unfilled)
    full = builder(layout, seed=0, exclude_images=(0,))
    assert c.missing.sum() > full.missing.sum()


def test_empty_retrieval_and_empty_layout_do_not_crash(val_bank: Bank, builder: CanvasBuilder) -> None:
    layout = np.asarray(val_bank.labels[1])
    everything = tuple(range(val_bank.num_images))
    c = builder(layout, seed=0, exclude_images=everything)
    assert c.segments == () and c.missing.all() and (c.provenance == -1).all() and not c.canvas.any()
    assert c.unfilled and all(s in ("no_candidates", "below_min_area") for _, s in c.unfilled)
    blank = np.full(val_bank.resolution, IGNORE, np.uint8)
    e = builder(blank, seed=0)
    assert e.missing.all() and e.segments == () and e.unfilled == ()


def test_bad_layouts_are_layout_errors(builder: CanvasBuilder) -> None:
    with pytest.raises(LayoutError, match="resolution"):
        builder(np.zeros((10, 10), np.uint8))
    h, w = builder.resolution
    with pytest.raises(LayoutError, match="outside the class table"):
        builder(np.full((h, w), 40, np.uint8))
    with pytest.raises(LayoutError, match="integer"):
        builder(np.zeros((h, w), np.float32))


def test_custom_aligner_and_orderer_are_used(val_bank: Bank, layout: np.ndarray) -> None:
    calls = {"align": 0}

    def shift_right(layout, target, pixels, mask):
        calls["align"] += 1
        return np.roll(pixels, 5, axis=1), np.roll(mask, 5, axis=1)

    def reverse(layout, masks, class_ids):
        return list(range(len(masks)))[::-1]

    b = CanvasBuilder.from_bank(
        val_bank, aligner=shift_right, orderer=reverse, options=CanvasOptions(elision=ElisionConfig(white_fraction=0.0))
    )
    c = b(layout, seed=0, exclude_images=(0,))
    assert calls["align"] == len(c.segments)
    assert [s.component_id for s in c.segments] == sorted((s.component_id for s in c.segments), reverse=True)
    # Provenance now points 5 px right of the source position.
    source = CachedSegments(val_bank)
    sid = int(np.bincount(c.provenance[c.provenance >= 0]).argmax())
    seg = source.segment(sid)
    sel = c.provenance == sid
    shifted = np.roll(source.image(seg.image_id).photo, 5, axis=1)
    assert (c.canvas[sel] == shifted[sel]).all()


def test_cached_segments_match_bank(val_bank: Bank) -> None:
    source = CachedSegments(val_bank, max_images=2)
    for sid in (0, 5, val_bank.num_segments - 1, 7, 0):
        a, b = source.segment(sid), val_bank.segment(sid)
        assert (a.segment_id, a.image_id, a.class_id, a.bbox, a.context_box, a.area) == (
            b.segment_id,
            b.image_id,
            b.class_id,
            b.bbox,
            b.context_box,
            b.area,
        )
        assert (a.crop == b.crop).all() and (a.mask == b.mask).all() and (a.context == b.context).all()
    assert source.misses >= 2 and len(source._cache) <= 2
    image = int(val_bank.column("image_id")[5])
    ids = source.segment_at(image, source.image(image).components)
    assert ids[val_bank.segment(5).mask].tolist() == [5] * val_bank.segment(5).area
    with pytest.raises(KeyError):
        source.segment(val_bank.num_segments)


def test_plain_bank_as_segment_source_gives_same_canvas(val_bank: Bank, builder: CanvasBuilder) -> None:
    layout = np.asarray(val_bank.labels[3])
    plain = CanvasBuilder(
        builder.retriever,
        val_bank,
        classes=val_bank.classes,
        config=val_bank.config,
        resolution=val_bank.resolution,
    )
    a, b = builder(layout, seed=2, exclude_images=(3,)), plain(layout, seed=2, exclude_images=(3,))
    assert (a.canvas == b.canvas).all() and (a.provenance == b.provenance).all()


def test_batch_aligner_is_called_once_and_matches_the_per_segment_path(val_bank: Bank, layout: np.ndarray) -> None:
    config = TransformConfig(input_size=(16, 20), widths=(4, 8, 8), hidden=8, min_window=(8, 10))
    net = TransformNet.from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights, a small head: transforms near the identity, some kept, some not
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        net.head.weight.mul_(0.05)
        net.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
    batched = TransformAligner(net, config)
    calls = {"many": 0, "one": 0}
    align_many = batched.align_many

    def spy(*args: object) -> list:
        calls["many"] += 1
        return align_many(*args)  # type: ignore[arg-type]

    batched.align_many = spy  # type: ignore[method-assign]
    assert isinstance(batched, BatchAligner)
    per_segment = TransformAligner(net, config)

    def one(layout: np.ndarray, target: np.ndarray, pixels: np.ndarray, mask: np.ndarray) -> tuple:
        calls["one"] += 1  # a plain function: the builder cannot batch it
        return per_segment(layout, target, pixels, mask)

    a = CanvasBuilder.from_bank(val_bank, aligner=batched)(layout, seed=1, exclude_images=(0,))
    b = CanvasBuilder.from_bank(val_bank, aligner=one)(layout, seed=1, exclude_images=(0,))
    assert calls == {"many": 1, "one": len(a.segments)} and len(a.segments) > 3
    assert batched.calls == per_segment.calls and batched.fallbacks == per_segment.fallbacks
    assert 0 < batched.fallbacks < batched.calls  # both outcomes occurred
    assert [s.segment_id for s in a.segments] == [s.segment_id for s in b.segments]
    assert (a.provenance == b.provenance).all() and (a.missing == b.missing).all()
    assert np.abs(a.canvas.astype(int) - b.canvas.astype(int)).max() <= 1  # float noise in T's batched forward
