"""Bank format round trips and the read API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexers.readers import create_reader
from memory_bank import (
    BankFormatError,
    BankNotFoundError,
    BankWriter,
    SegmentConfig,
    SourceInfo,
    current_version,
    extract_segments,
    make_record,
    open_bank,
)
from memory_bank.reader import Bank
from memory_bank.store import VERSIONS_DIR
from memory_bank.torch_dataset import SegmentDataset


def test_round_trip_gives_identical_arrays(tmp_path: Path, sample_root: Path) -> None:
    reader = create_reader("camvid", sample_root, ["val"])
    cfg = SegmentConfig(fine_grid=(18, 24), coarse_grids=((6, 8),))
    records = [
        make_record(
            s.image,
            s.label,
            classes=reader.classes,
            config=cfg,
            resolution=(180, 240),
            dataset="camvid",
            split="val",
            source_file=s.source_file,
            label_file=s.label_file,
        )
        for s in list(reader)[:3]
    ]
    with BankWriter(tmp_path / "bank", classes=reader.classes, resolution=(180, 240), config=cfg, capacity=3) as w:
        for r in records:
            w.add(r)
        w.finish([SourceInfo("camvid", str(sample_root), ("val",), 3)])
        manifest = w.publish()
    bank = open_bank(tmp_path / "bank")
    assert bank.version == manifest.bank_version == current_version(tmp_path / "bank")
    assert bank.manifest == manifest
    assert bank.resolution == (180, 240) and bank.config == cfg and bank.classes == reader.classes
    offset = 0
    for i, r in enumerate(records):
        np.testing.assert_array_equal(bank.photos[i], r.photo)
        np.testing.assert_array_equal(bank.labels[i], r.label)
        np.testing.assert_array_equal(bank.components[i], r.segments.component_map)
        n = len(r.segments)
        np.testing.assert_array_equal(bank.codes["mask"][offset : offset + n], r.codes.mask)
        np.testing.assert_array_equal(bank.context_rows(offset, offset + n), r.codes.context)
        np.testing.assert_array_equal(bank.codes["coarse"][offset : offset + n], r.codes.coarse)
        np.testing.assert_array_equal(bank.column("bbox")[offset : offset + n], r.segments.bbox)
        np.testing.assert_array_equal(bank.column("mask_popcount")[offset : offset + n], r.codes.mask_popcount)
        np.testing.assert_array_equal(bank.column("image_id")[offset : offset + n], i)
        offset += n
    assert offset == bank.num_segments == manifest.counts.segments
    assert sum(manifest.counts.segments_per_class) == bank.num_segments
    assert bank.verify() == []


def test_segment_read_api(val_bank: Bank) -> None:
    label_cache: dict[int, np.ndarray] = {}
    for sid in [0, val_bank.num_segments // 2, val_bank.num_segments - 1]:
        seg = val_bank.segment(sid)
        label = label_cache.setdefault(seg.image_id, np.asarray(val_bank.labels[seg.image_id]))
        assert seg.mask.shape == val_bank.resolution and seg.mask.sum() == seg.area
        assert (label[seg.mask] == seg.class_id).all()
        y0, x0, y1, x1 = seg.bbox
        ys, xs = np.nonzero(seg.mask)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
        assert seg.crop.shape == (y1 - y0, x1 - x0, 3)
        photo = np.asarray(val_bank.photos[seg.image_id])[y0:y1, x0:x1]
        np.testing.assert_array_equal(seg.crop[seg.crop_mask], photo[seg.crop_mask])
        assert (seg.crop[~seg.crop_mask] == 0).all()
        cy0, cx0, cy1, cx1 = seg.context_box
        np.testing.assert_array_equal(seg.context[cy0:cy1, cx0:cx1], label[cy0:cy1, cx0:cx1])
        outside = np.ones(seg.mask.shape, bool)
        outside[cy0:cy1, cx0:cx1] = False
        assert (seg.context[outside] == 255).all()
    with pytest.raises(KeyError, match="not in this bank"):
        val_bank.segment(val_bank.num_segments)


def test_segments_match_a_fresh_extraction(val_bank: Bank) -> None:
    # The stored component map is what extract_segments gives on the stored label map.
    label = np.asarray(val_bank.labels[3])
    seg = extract_segments(label, len(val_bank.classes), val_bank.config)
    np.testing.assert_array_equal(np.asarray(val_bank.components[3]), seg.component_map)
    ids = val_bank.segment_ids()[val_bank.column("image_id") == 3]
    np.testing.assert_array_equal(val_bank.column("class_id")[ids], seg.class_id)


def test_iteration_by_class_and_faiss_files(val_bank: Bank) -> None:
    counts = val_bank.manifest.counts.segments_per_class
    for c, n in enumerate(counts):
        ids = val_bank.segment_ids(c)
        assert ids.size == n == val_bank.class_table(c).num_rows
        assert (val_bank.faiss_index_path(c) is not None) == (n > 0)
    car = list(val_bank.iter_class(8))
    assert len(car) == counts[8] and all(s.class_id == 8 for s in car)


def test_torch_dataset(val_bank: Bank) -> None:
    import torch
    from torch.utils.data import DataLoader

    ds = SegmentDataset(val_bank, classes=[3, 8], crop_size=(32, 48))
    assert len(ds) == len(val_bank.segment_ids(3)) + len(val_bank.segment_ids(8))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["crop"].shape == (4, 3, 32, 48) and batch["crop"].dtype == torch.float32
    assert batch["crop"].min() >= 0.0 and batch["crop"].max() <= 1.0
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(batch["class_id"].tolist()) <= {3, 8}
    item = SegmentDataset(val_bank)[0]
    y0, x0, y1, x1 = item["bbox"].tolist()
    assert item["crop"].shape == (3, y1 - y0, x1 - x0)


def test_missing_bank_errors(tmp_path: Path) -> None:
    with pytest.raises(BankNotFoundError, match="does not exist"):
        open_bank(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BankNotFoundError, match="nothing has been published"):
        open_bank(tmp_path / "empty")


def test_unknown_format_version_is_refused(tmp_path: Path, val_bank_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(val_bank_path, copy)
    vdir = copy / VERSIONS_DIR / current_version(copy)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["format_version"] = 3
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankFormatError, match="format version 3"):
        open_bank(copy)


def test_verify_detects_tampering(tmp_path: Path, val_bank_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(val_bank_path, copy)
    bank = open_bank(copy)
    (bank.path / "segments.parquet").write_bytes(b"garbage")
    assert bank.verify() == ["changed: segments.parquet"]
    with pytest.raises(BankFormatError, match="unreadable"):
        open_bank(copy)
