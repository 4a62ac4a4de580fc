"""``sims train all --tiny``: the whole chain on the sample bank, resumed, and served by the worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from sims.cli import main as sims_main
from synthesis.model_directory import read_metadata
from synthesis.training.chain import STAGES
from synthesis.worker.runtime import load_networks
from synthesis.worker.settings import WorkerSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chain_out(val_bank_path: Path, tiny_vgg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chain, interrupted after its first stage began, then run to the end."""
    out = tmp_path_factory.mktemp("train-all")
    args = ["train", "all", "--bank", str(val_bank_path), "--out", str(out), "--tiny"]
    args += ["--vgg-weights", str(tiny_vgg), "--no-progress"]
    # A zero time limit stops the first network at step 0, with a checkpoint: the chain ends there.
    assert sims_main([*args, "--time-limit-minutes", "0"]) == 0
    assert not (out / "weights").exists() and (out / "runs/transform/latest.json").is_file()
    assert sims_main(args) == 0  # resumes T from its checkpoint and runs every other stage
    return out


def test_the_chain_writes_every_network_and_a_rerun_skips_them(
    chain_out: Path, val_bank_path: Path, tiny_vgg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = chain_out / "weights"
    assert sorted(p.name for p in weights.iterdir()) == sorted(s for s in STAGES if s != "canvas")
    assert (weights / "ordering" / "class_prior.json").is_file()
    assert read_metadata(weights / "transform")["step"] == 4  # resumed from step 0 to the config's 4
    assert read_metadata(weights / "synthesis-parametric")["parametric"] is True
    capsys.readouterr()
    args = ["train", "all", "-b", str(val_bank_path), "-o", str(chain_out), "--tiny", "--vgg-weights", str(tiny_vgg)]
    assert sims_main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert all(f"{stage}: done" in out for stage in STAGES), out


def test_the_worker_serves_the_weights_folder(
    chain_out: Path, val_bank_path: Path, val_bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = WorkerSettings(weights_dir=chain_out / "weights")
    assert settings.transform_weights == chain_out / "weights" / "transform"
    nets = load_networks(settings)
    assert nets.generator.resolution == (24, 32) and None not in (nets.refiner, nets.aligner, nets.orderer)
    # What `sims serve --with-worker --weights-dir DIR` runs: the in-process backend reads SIMS_WORKER_WEIGHTS_DIR.
    monkeypatch.setenv("SIMS_WORKER_WEIGHTS_DIR", str(chain_out / "weights"))
    service = Settings(bank=val_bank_path, wait_for_bank=True, synthesis_backend="in_process")
    layout = np.asarray(val_bank.labels[3])
    with TestClient(create_app(service)) as client:
        r = client.post("/synthesize", files={"layout": ("layout.png", encode_layout_png(layout), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
