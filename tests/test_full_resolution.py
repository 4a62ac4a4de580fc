"""``full`` mode: exact top-k on pixels, held to a literal full-frame brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from memory_bank import Bank, extract_segments
from retrieval_service.engine import RetrievalEngine
from retrieval_service.full_resolution import PixelFrames, score_pixels, upper_bounds
from retrieval_service.index import SegmentIndex
from retrieval_service.reference import pixel_brute_force_topk
from retrieval_service.types import RetrievalOptions, Status


@pytest.fixture(scope="module")
def engine(val_bank: Bank) -> RetrievalEngine:
    return RetrievalEngine.from_bank(val_bank)


@pytest.fixture(scope="module")
def bank_segments(val_bank: Bank) -> dict[int, list]:
    """Every segment of the bank read once, by class (the reference reads full frames)."""
    out: dict[int, list] = {}
    for sid in val_bank.segment_ids():
        seg = val_bank.segment(int(sid))
        out.setdefault(seg.class_id, []).append(seg)
    return out


@pytest.mark.parametrize("image_id", [0, 5])
def test_full_mode_equals_pixel_brute_force(
    val_bank: Bank, engine: RetrievalEngine, bank_segments: dict[int, list], image_id: int
) -> None:
    # Query with one bank image's layout, excluding that image (else it finds itself at 2.0).
    label = np.asarray(val_bank.labels[image_id])
    k = 3
    result = engine.retrieve(label, RetrievalOptions(k=k, mode="full", exclude_images=[image_id]))
    assert result.mode == "full"
    segs = extract_segments(label, len(val_bank.classes), replace(val_bank.config, min_area=1))
    checked = 0
    for comp in result.components:
        if comp.status is not Status.OK:
            continue
        pool = [s for s in bank_segments[comp.class_id] if s.image_id != image_id]
        ids, scores, miou, ciou = pixel_brute_force_topk(
            label, segs.mask(comp.component_id), segs.context_box[comp.component_id], pool, k
        )
        assert [m.segment_id for m in comp.matches] == ids.tolist()
        assert [m.score for m in comp.matches] == scores.tolist()  # bit for bit
        assert [m.mask_iou for m in comp.matches] == miou.tolist()
        assert [m.context_iou for m in comp.matches] == ciou.tolist()
        assert all(m.image_id != image_id for m in comp.matches)
        checked += 1
    assert checked >= 10


def test_full_mode_finds_own_segments_and_reports_statuses(val_bank: Bank, engine: RetrievalEngine) -> None:
    label = np.asarray(val_bank.labels[2])
    result = engine.retrieve(label, RetrievalOptions(k=1, mode="full"))
    own = set(val_bank.segment_ids()[val_bank.column("image_id") == 2].tolist())
    ok = [c for c in result.components if c.status is Status.OK]
    assert ok and all(c.matches[0].score == 2.0 and c.matches[0].segment_id in own for c in ok)
    assert any(c.status is Status.BELOW_MIN_AREA for c in result.components)


def test_bounds_never_undercut_pixel_scores(val_bank: Bank, engine: RetrievalEngine) -> None:
    frames = engine.pixel_frames()
    label = np.asarray(val_bank.labels[4])
    segs = extract_segments(label, len(val_bank.classes), val_bank.config)
    query = PixelFrames.from_query(label, segs, len(val_bank.classes))
    every = val_bank.segment_ids()
    for i in range(len(segs)):
        scores = score_pixels(query, i, frames, every)
        assert np.all(upper_bounds(query, i, frames, every) >= scores[:, 0])
        assert np.all((scores >= 0) & (scores[:, :1] <= 2.0))


def test_full_mode_needs_a_bank(val_bank: Bank) -> None:
    index = SegmentIndex.from_bank(val_bank)
    engine = RetrievalEngine(index)  # made from arrays, no bank pixels
    with pytest.raises(ValueError, match="from_bank"):
        engine.retrieve(np.asarray(val_bank.labels[0]), RetrievalOptions(mode="full"))
