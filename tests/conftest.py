"""Shared fixtures: the bundled CamVid sample and small banks built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import Bank, open_bank

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "camvid-sample"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def val_bank_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bank of the 8 sample val images, built once per session (read-only for tests)."""
    out = tmp_path_factory.mktemp("banks") / "val"
    build_bank(create_reader("camvid", SAMPLE, ["val"]), out, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def val_bank(val_bank_path: Path) -> Bank:
    return open_bank(val_bank_path)
