"""Bank format 2 (boxed contexts): format-1 banks still read, `sims index migrate` upgrades them
atomically, and retrieval on the migrated bank is the same as on the original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from indexers.build import add_to_bank, migrate_bank
from indexers.readers import create_reader
from memory_bank import BankWriter, current_version, open_bank
from memory_bank.errors import BankFormatError
from memory_bank.store import file_checksums
from retrieval_service.engine import RetrievalEngine
from retrieval_service.types import RetrievalOptions
from sims.cli import main


def as_format_1(root: Path) -> str:
    """Rewrite a bank's current version in place as format 1 wrote it: dense rows in ``codes/context``."""
    version = current_version(root)
    vdir = root / "versions" / version
    dense = open_bank(root).context_rows()
    codes = zarr.open_group(vdir / "arrays.zarr" / "codes", mode="r+", zarr_format=3)
    codes.create_array("context", shape=dense.shape, chunks=(4096, dense.shape[1]), dtype="uint8", fill_value=0)[:] = (
        dense
    )
    for name in ("context_box", "context_cells"):
        shutil.rmtree(vdir / "arrays.zarr" / "codes" / name)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["codes"]["context_layout"]
    manifest["checksums"] = file_checksums(vdir)
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    return version


@pytest.fixture
def v1_bank(val_bank_path: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bank"
    shutil.copytree(val_bank_path, root)
    as_format_1(root)
    return root


def results(root: Path, version: str | None = None) -> list:
    bank = open_bank(root, version)
    engine = RetrievalEngine.from_bank(bank)
    out = []
    for mode in ("fast", "exact"):
        for i in range(bank.num_images):
            r = engine.retrieve(np.asarray(bank.labels[i]), RetrievalOptions(k=3, mode=mode))
            out.append([(c.status, [(m.segment_id, m.score) for m in c.matches]) for c in r.components])
    return out


def test_format_1_banks_still_read(v1_bank: Path, val_bank_path: Path) -> None:
    old, new = open_bank(v1_bank), open_bank(val_bank_path)
    assert (old.format_version, new.format_version) == (1, 2)
    assert old.verify() == []
    np.testing.assert_array_equal(old.context_rows(), new.context_rows())
    np.testing.assert_array_equal(old.context_rows(5, 17), new.context_rows(5, 17))
    assert old.context_codes().nbytes == new.context_codes().nbytes
    np.testing.assert_array_equal(old.context_codes().data, new.context_codes().data)
    assert results(v1_bank) == results(val_bank_path)


def test_migrate_round_trip(v1_bank: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = open_bank(v1_bank)
    want = results(v1_bank)
    assert main(["index", "migrate", str(v1_bank)]) == 0
    assert "format 1 -> 2" in capsys.readouterr().out
    after = open_bank(v1_bank)
    assert after.format_version == 2 and after.manifest.parent_version == before.version
    assert after.verify() == []
    assert after.segments.equals(before.segments) and after.images.equals(before.images)
    assert after.manifest.counts == before.manifest.counts and after.manifest.sources == before.manifest.sources
    np.testing.assert_array_equal(after.context_rows(), before.context_rows())
    for name in ("mask", "coarse"):
        np.testing.assert_array_equal(after.codes[name][:], before.codes[name][:])
    np.testing.assert_array_equal(after.photos[3], before.photos[3])
    assert results(v1_bank) == want
    # The old version is still there, and a second migrate does nothing.
    assert open_bank(v1_bank, before.version).format_version == 1
    assert migrate_bank(v1_bank) is None
    assert main(["index", "migrate", str(v1_bank)]) == 0
    assert "already format 2" in capsys.readouterr().out


def test_a_crashed_migrate_leaves_the_old_version_current(v1_bank: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = current_version(v1_bank)

    def crash(self: BankWriter) -> None:
        raise RuntimeError("killed while publishing")

    monkeypatch.setattr(BankWriter, "publish", crash)
    with pytest.raises(RuntimeError):
        migrate_bank(v1_bank)
    assert current_version(v1_bank) == version
    assert open_bank(v1_bank).format_version == 1 and open_bank(v1_bank).verify() == []


def test_adding_to_a_format_1_bank_writes_format_2(v1_bank: Path, sample_root: Path) -> None:
    before = open_bank(v1_bank)
    add_to_bank(create_reader("camvid", sample_root, ["train"]), v1_bank, workers=1, progress=False)
    after = open_bank(v1_bank)
    assert after.format_version == 2 and after.num_images > before.num_images
    np.testing.assert_array_equal(after.context_rows(0, before.num_segments), before.context_rows())
    assert after.verify() == []


def test_unknown_context_layout_fails_cleanly(v1_bank: Path) -> None:
    vdir = v1_bank / "versions" / current_version(v1_bank)
    shutil.rmtree(vdir / "arrays.zarr" / "codes" / "context")
    with pytest.raises(BankFormatError, match="no codes/context"):
        open_bank(v1_bank).context_rows()
