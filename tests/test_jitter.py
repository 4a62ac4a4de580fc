"""Jittered code banks for the retrieval benchmark (benchmarks/jitter.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import jitter
from benchmarks.jitter import (
    ARRAYS,
    CodeBank,
    apply_jitter,
    code_bank_from_bank,
    jitter_for,
    jittered_bank,
)
from memory_bank import IGNORE, encode_segments, extract_segments, open_bank, popcount

EXTRA = 200  # jittered segments past the real ones


@pytest.fixture(scope="module")
def bank_path(val_bank_path: Path) -> Path:
    """The shared session bank of the sample's val images (conftest), read only."""
    return val_bank_path


@pytest.fixture(scope="module")
def real(bank_path: Path) -> CodeBank:
    return code_bank_from_bank(bank_path)


@pytest.fixture(scope="module")
def jittered(bank_path: Path, real: CodeBank) -> CodeBank:
    return jittered_bank(bank_path, len(real) + EXTRA, seed=3, workers=1, cache_dir=None, progress=False)


def assert_banks_equal(a: CodeBank, b: CodeBank) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.config, a.resolution, a.num_classes) == (b.config, b.resolution, b.num_classes)


def test_exact_size_and_layout(jittered: CodeBank, real: CodeBank) -> None:
    n = len(real) + EXTRA
    assert len(jittered) == n
    for name in ARRAYS:
        assert getattr(jittered, name).shape[0] == n, name
        assert getattr(jittered, name).shape[1:] == getattr(real, name).shape[1:], name
        assert getattr(jittered, name).dtype == getattr(real, name).dtype, name
    assert jittered.context.shape[1] == jittered.config.fine_grid[0] * jittered.config.fine_grid[1]


def test_deterministic_for_a_seed(bank_path: Path, jittered: CodeBank, real: CodeBank) -> None:
    n = len(jittered)
    again = jittered_bank(bank_path, n, seed=3, workers=2, cache_dir=None, progress=False)
    assert_banks_equal(jittered, again)
    other = jittered_bank(bank_path, n, seed=4, workers=1, cache_dir=None, progress=False)
    assert not np.array_equal(other.context[len(real) :], jittered.context[len(real) :])


def test_real_segments_come_first(bank_path: Path, jittered: CodeBank, real: CodeBank) -> None:
    num_source = open_bank(bank_path).num_images
    head = CodeBank(
        **{name: getattr(jittered, name)[: len(real)] for name in ARRAYS},
        config=jittered.config,
        resolution=jittered.resolution,
        num_classes=jittered.num_classes,
    )
    assert_banks_equal(head, real)
    # After them come jittered copies, cycling through the source images.
    tail_images = jittered.image_id[len(real) :]
    assert tail_images.min() == num_source
    np.testing.assert_array_equal(jittered.source_image, jittered.image_id % num_source)
    # A bank smaller than the source is a prefix of the real one.
    small = jittered_bank(bank_path, 50, seed=3, workers=1, cache_dir=None, progress=False)
    assert_banks_equal(small, CodeBank(**{k: getattr(real, k)[:50] for k in ARRAYS}, **_meta(real)))


def _meta(b: CodeBank) -> dict:
    return {"config": b.config, "resolution": b.resolution, "num_classes": b.num_classes}


def test_jittered_codes_match_encode_segments(bank_path: Path, jittered: CodeBank) -> None:
    bank = open_bank(bank_path)
    num_source = bank.num_images
    # The first jittered image, whole (the last one may be cut short).
    k = num_source
    assert jittered.image_id[-1] > k
    jit = jitter_for(3, k, num_source, bank.resolution)
    assert jit is not None and jit.scale != 1.0
    label = apply_jitter(np.asarray(bank.labels[k % num_source]), jit)
    assert (label == IGNORE).any()  # jittered in the frame, so something came from outside
    segments = extract_segments(label, len(bank.classes), bank.config)
    codes = encode_segments(label, segments, len(bank.classes), bank.config)
    rows = np.flatnonzero(jittered.image_id == k)
    assert rows.size == len(segments) > 0
    np.testing.assert_array_equal(jittered.class_id[rows], segments.class_id)
    np.testing.assert_array_equal(jittered.area[rows], segments.area)
    np.testing.assert_array_equal(jittered.bbox[rows], segments.bbox)
    for name in ("mask", "context", "coarse", "mask_popcount", "context_popcount"):
        np.testing.assert_array_equal(getattr(jittered, name)[rows], getattr(codes, name), err_msg=name)


def test_apply_jitter_identity_and_shift() -> None:
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert apply_jitter(label, None) is label
    np.testing.assert_array_equal(apply_jitter(label, jitter.Jitter(1.0, (1.0, 2.0), (0.0, 0.0))), label)
    shifted = apply_jitter(label, jitter.Jitter(1.0, (0.0, 0.0), (1.0, -1.0)))
    np.testing.assert_array_equal(shifted[0], [IGNORE] * 4)
    np.testing.assert_array_equal(shifted[1:, :3], label[:2, 1:])
    np.testing.assert_array_equal(shifted[:, 3], [IGNORE] * 3)


def test_popcounts_and_ranges(jittered: CodeBank) -> None:
    np.testing.assert_array_equal(popcount(jittered.mask), jittered.mask_popcount)
    np.testing.assert_array_equal((jittered.context != IGNORE).sum(axis=1), jittered.context_popcount)
    assert (jittered.mask_popcount >= 1).all()
    assert (popcount(jittered.coarse) >= 1).all()  # every segment shows in its coarse code
    assert jittered.class_id.max() < jittered.num_classes
    assert (jittered.area >= jittered.config.min_area).all()
    h, w = jittered.resolution
    b = jittered.bbox
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= h).all() and (b[:, 3] <= w).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (np.diff(jittered.image_id) >= 0).all()


def test_cache_roundtrip(bank_path: Path, jittered: CodeBank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = len(jittered)
    first = jittered_bank(bank_path, n, seed=3, workers=1, cache_dir=tmp_path, progress=False)
    assert_banks_equal(first, jittered)
    [entry] = list(tmp_path.iterdir())  # one cache entry, no staging left behind
    assert (entry / "meta.json").is_file()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(jitter, "_generate", fail)
    second = jittered_bank(bank_path, n, seed=3, workers=1, cache_dir=tmp_path, progress=False)
    assert isinstance(second.context, np.memmap)
    assert_banks_equal(second, first)
    # Another seed or size is another entry.
    with pytest.raises(AssertionError, match="regenerated"):
        jittered_bank(bank_path, n, seed=5, workers=1, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == [entry]  # the failed build left nothing behind
