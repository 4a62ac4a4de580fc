"""Bank builds: CLI, parallel and Dask paths, appends, atomic publication, bad inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexers.build import add_to_bank, build_bank
from indexers.readers import create_reader
from memory_bank import DatasetError, current_version, list_versions, open_bank
from memory_bank.store import STAGING_DIR
from sims.cli import main


def copy_sample(src: Path, dst: Path, splits: dict[str, int]) -> Path:
    """A CamVid-layout copy of the first n pairs of each split."""
    for split, n in splits.items():
        for sub in (split, f"{split}annot"):
            (dst / sub).mkdir(parents=True, exist_ok=True)
            for p in sorted((src / sub).glob("*.png"))[:n]:
                shutil.copy2(p, dst / sub / p.name)
    return dst


def tables_equal(a: Path, b: Path) -> None:
    ba, bb = open_bank(a), open_bank(b)
    assert ba.segments.equals(bb.segments)
    for name in ("mask", "context_box", "context_cells", "coarse"):
        np.testing.assert_array_equal(ba.codes[name][:], bb.codes[name][:])
    np.testing.assert_array_equal(ba.photos[:], bb.photos[:])


def test_cli_build_and_info(tmp_path: Path, sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_sample(sample_root, tmp_path / "data", {"val": 3})
    code = main(["index", "build", "-d", "camvid", "-r", str(root), "-o", str(tmp_path / "bank"), "--splits", "val",
                 "--resolution", "180x240", "--fine-grid", "18x24", "-j", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "images    3 at 180x240" in out and "fine grid 18x24" in out and "8-connectivity" in out
    assert main(["index", "info", str(tmp_path / "bank"), "--json"]) == 0
    assert '"format_version": 2' in capsys.readouterr().out
    assert main(["index", "verify", str(tmp_path / "bank")]) == 0


def test_parallel_build_equals_serial(tmp_path: Path, sample_root: Path) -> None:
    reader = create_reader("camvid", copy_sample(sample_root, tmp_path / "data", {"val": 4}), ["val"])
    build_bank(reader, tmp_path / "serial", workers=1, progress=False)
    build_bank(reader, tmp_path / "parallel", workers=2, progress=False)
    tables_equal(tmp_path / "serial", tmp_path / "parallel")
    assert open_bank(tmp_path / "parallel").verify() == []


def test_dask_local_cluster_build(tmp_path: Path, sample_root: Path) -> None:
    from dask.distributed import LocalCluster

    reader = create_reader("camvid", copy_sample(sample_root, tmp_path / "data", {"val": 3}), ["val"])
    build_bank(reader, tmp_path / "local", workers=1, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        report = build_bank(reader, tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
    assert report.manifest.counts.images == 3
    tables_equal(tmp_path / "local", tmp_path / "dask")
    assert open_bank(tmp_path / "dask").verify() == []


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path, sample_root: Path) -> None:
    reader = create_reader("camvid", copy_sample(sample_root, tmp_path / "data", {"val": 1}), ["val"])
    with pytest.raises(DatasetError, match="cannot reach the Dask scheduler"):
        build_bank(reader, tmp_path / "bank", scheduler="tcp://127.0.0.1:9", scheduler_timeout=1, progress=False)
    assert not (tmp_path / "bank" / "CURRENT").exists()


def test_add_appends_without_rebuilding(tmp_path: Path, sample_root: Path) -> None:
    data = copy_sample(sample_root, tmp_path / "data", {"train": 2, "val": 2})
    build_bank(create_reader("camvid", data, ["train"]), tmp_path / "bank", workers=1, progress=False)
    first = open_bank(tmp_path / "bank")
    report = add_to_bank(create_reader("camvid", data, ["train", "val"]), tmp_path / "bank", workers=1, progress=False)
    assert (report.images_added, report.images_skipped) == (2, 2)
    second = open_bank(tmp_path / "bank")
    assert second.manifest.parent_version == first.version and len(list_versions(tmp_path / "bank")) == 2
    # Old rows are untouched, new ones continue the ids, and it equals a build of everything.
    assert second.segments.slice(0, first.num_segments).equals(first.segments)
    build_bank(create_reader("camvid", data, ["train", "val"]), tmp_path / "full", workers=1, progress=False)
    tables_equal(tmp_path / "bank", tmp_path / "full")
    assert second.verify() == [] and first.verify() == []
    # Photo chunks of the parent were hard-linked, not copied.
    chunk = "arrays.zarr/photos/c/0/0/0/0"
    assert (first.path / chunk).stat().st_ino == (second.path / chunk).stat().st_ino
    with pytest.raises(DatasetError, match="already in bank"):
        add_to_bank(create_reader("camvid", data, ["val"]), tmp_path / "bank", workers=1, progress=False)


KILLER = """
import os, signal, sys
import memory_bank.writer as writer, memory_bank.store as store
from indexers.build import build_bank
from indexers.readers import create_reader

where = sys.argv[3]
if where == "add":
    original = writer.BankWriter.add
    def add(self, record, checksums=None):
        if self.next_image_id == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, record, checksums)
    writer.BankWriter.add = add
else:  # after the version directory is renamed in, before CURRENT is swapped
    store.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
build_bank(create_reader("camvid", sys.argv[1], ["val"]), sys.argv[2], workers=1, progress=False)
"""


def test_second_concurrent_build_fails_fast(tmp_path: Path, sample_root: Path) -> None:
    from memory_bank import BankBusyError
    from memory_bank.store import Staging

    holder = Staging(tmp_path / "bank")  # a build in progress holds the writer lock
    reader = create_reader("camvid", copy_sample(sample_root, tmp_path / "data", {"val": 1}), ["val"])
    with pytest.raises(BankBusyError, match="another build is writing"):
        build_bank(reader, tmp_path / "bank", workers=1, progress=False)
    holder.abort()
    build_bank(reader, tmp_path / "bank", workers=1, progress=False)
    assert open_bank(tmp_path / "bank").num_images == 1


@pytest.mark.parametrize("where", ["add", "publish"])
def test_killed_build_leaves_previous_version_intact(tmp_path: Path, sample_root: Path, where: str) -> None:
    data = copy_sample(sample_root, tmp_path / "data", {"val": 4})
    bank = tmp_path / "bank"
    build_bank(create_reader("camvid", data, ["val"]), bank, workers=1, progress=False)
    before = current_version(bank)
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    proc = subprocess.run([sys.executable, str(script), str(data), str(bank), where], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    # Readers still get the old version, whole and valid.
    assert current_version(bank) == before
    assert open_bank(bank).verify() == []
    if where == "add":
        assert any((bank / STAGING_DIR).iterdir())
    # The next build cleans up the dead build's leftovers and publishes.
    build_bank(create_reader("camvid", data, ["val"]), bank, workers=1, progress=False)
    assert current_version(bank) != before
    assert [p.name for p in (bank / STAGING_DIR).iterdir() if p.is_dir()] == []


def write_pair(root: Path, name: str, photo_size: tuple[int, int], label: np.ndarray) -> None:
    for sub in ("train", "trainannot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*photo_size, 3), np.uint8)).save(root / "train" / name)
    Image.fromarray(label).save(root / "trainannot" / name)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no image/label pairs"),
        ("size", "is 40x30 but its label map"),
        ("label", r"label ids \[12\] are not in the camvid class table"),
        ("corrupt", "not a readable image"),
    ],
)
def test_bad_datasets_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    root = tmp_path / "data"
    if case == "empty":
        (root / "train").mkdir(parents=True)
        (root / "trainannot").mkdir()
    elif case == "size":
        write_pair(root, "a.png", (30, 40), np.zeros((20, 40), np.uint8))
    elif case == "label":
        write_pair(root, "a.png", (20, 40), np.full((20, 40), 12, np.uint8))
    elif case == "corrupt":
        write_pair(root, "a.png", (20, 40), np.zeros((20, 40), np.uint8))
        (root / "trainannot" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code = main(["index", "build", "-d", "camvid", "-r", str(root), "-o", str(tmp_path / "bank"), "--splits", "train",
                 "-j", "1", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert (err.startswith("error: ") and message.replace("\\", "") in err.replace("\\", "")) or pytest.fail(err)
    assert "Traceback" not in err
    assert not (tmp_path / "bank" / "CURRENT").exists()
