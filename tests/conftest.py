"""Shared fixtures: the bundled CamVid sample, small banks built from it, and a tiny synthesis network."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import Bank, open_bank
from synthesis.canvas.builder import CanvasBuilder
from synthesis.model_directory import save_pretrained
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.networks.vgg import conv_feature_indices

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "camvid-sample"
#: The tiny synthesis network of the tests (24x32, 3 scales).
TINY_SYNTHESIS = json.loads((REPO / "configs/synthesis/tiny.json").read_text())["model"]


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


@pytest.fixture(scope="module")
def builder(val_bank: Bank) -> CanvasBuilder:
    """The canvas builder of the val bank (one per test module: its segment cache is the module's)."""
    return CanvasBuilder.from_bank(val_bank)


@pytest.fixture(scope="module")
def extra_data(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CamVid train pairs to append as a new version."""
    dst = tmp_path_factory.mktemp("extra")
    for sub in ("train", "trainannot"):
        (dst / sub).mkdir()
        for p in sorted((sample_root / sub).glob("*.png"))[:2]:
            shutil.copy2(p, dst / sub / p.name)
    return dst


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised (seed 0) tiny synthesis network, saved with the checkpoint verbs (read-only)."""
    torch.manual_seed(0)
    net = CascadedRefinementNetwork.from_config(RefinementConfig.from_dict(TINY_SYNTHESIS))
    return save_pretrained(net, tmp_path_factory.mktemp("nets") / "tiny", {"untrained": True})


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: the in-process and HTTP paths then give identical images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_vgg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random VGG-16 convolutions up to conv2_2 in torchvision's layout (all the tiny config needs)."""
    g = torch.Generator().manual_seed(0)
    state, in_ch = {}, 3
    for name, index in conv_feature_indices("vgg16").items():
        out_ch = 64 if name.startswith("conv1") else 128
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * (2 / (9 * in_ch)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(out_ch)
        in_ch = out_ch
        if name == "conv2_2":
            break
    path = tmp_path_factory.mktemp("vgg") / "tiny_vgg16.pth"
    torch.save(state, path)
    return path
