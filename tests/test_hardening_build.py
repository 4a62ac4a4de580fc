"""Issue 15, items 4, 9 and 10: no orphaned build workers, train-only default splits, ``sims index gc``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import current_version, list_versions, open_bank
from sims.cli import main
from tests.test_build import copy_sample

# A real `sims index build` with two pool workers, each image slowed so the build is still running when killed.
SLOW_BUILD = textwrap.dedent(
    """
    import sys, time
    import indexers.build as build
    original = build.prepare_image
    def slow(*a, **kw):
        time.sleep(0.5)
        return original(*a, **kw)
    build.prepare_image = slow
    from sims.cli import main
    sys.exit(main(["index", "build", "-d", "camvid", "-r", sys.argv[1], "-o", sys.argv[2], "--splits", "train",
                   "-j", "2", "--no-progress"]))
    """
)


def test_kill_9_of_a_build_leaves_no_worker(tmp_path: Path, sample_root: Path) -> None:
    data = copy_sample(sample_root, tmp_path / "data", {"train": 8})
    build = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(data), str(tmp_path / "bank")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(build.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.1)
    workers = parent.children(recursive=True)
    assert len(workers) >= 2, "the build did not start its pool"
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=5)
    for p in alive:  # clean up before failing
        p.kill()
    assert not alive, f"{len(alive)} worker(s) outlived the build"
    # Nothing holds the caller's stdout open any more: reading it ends.
    assert build.stdout is not None
    build.stdout.read()
    build.stdout.close()


def test_banks_index_the_train_split_by_default(tmp_path: Path, sample_root: Path) -> None:
    data = copy_sample(sample_root, tmp_path / "data", {"train": 2, "val": 1})
    assert create_reader("camvid", data).splits == ("train",)
    assert {r.split for r in create_reader("camvid", data).refs} == {"train"}
    assert len(create_reader("camvid", data, ["train", "val"])) == 3  # val only when asked for


@pytest.fixture
def three_versions(tmp_path: Path, sample_root: Path) -> Path:
    data = copy_sample(sample_root, tmp_path / "data", {"val": 1})
    bank = tmp_path / "bank"
    for _ in range(3):
        build_bank(create_reader("camvid", data, ["val"]), bank, workers=1, progress=False)
    assert len(list_versions(bank)) == 3
    return bank


def test_gc_keeps_the_newest_and_the_served(three_versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = three_versions
    served = current_version(bank)
    assert main(["index", "gc", str(bank), "--keep", "1"]) == 0
    assert list_versions(bank) == [served]
    assert "deleted 2" in capsys.readouterr().out
    open_bank(bank).verify()


def test_gc_never_deletes_current_even_when_older(three_versions: Path) -> None:
    from memory_bank.store import CURRENT_FILE, gc_versions

    bank = three_versions
    oldest, middle, newest = list_versions(bank)
    (bank / CURRENT_FILE).write_text(oldest + "\n")  # a rollback: the served version is the oldest one
    deleted = gc_versions(bank, keep=1)
    assert deleted == [middle]
    assert list_versions(bank) == [oldest, newest]
    assert current_version(bank) == oldest
    assert open_bank(bank).version == oldest


def test_gc_dry_run_and_bad_keep(three_versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = three_versions
    before = list_versions(bank)
    assert main(["index", "gc", str(bank), "--keep", "1", "--dry-run"]) == 0
    assert list_versions(bank) == before
    assert "would delete 2" in capsys.readouterr().out
    assert main(["index", "gc", str(bank), "--keep", "0"]) == 2
