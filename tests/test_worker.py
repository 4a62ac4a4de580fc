"""The synthesis worker app (its internal /synthesize, /livez, /readyz), its settings, and the CLI commands."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient
from sims.cli import build_app, main
from synthesis.pipeline import ImageGenerator, Networks
from synthesis.worker.app import create_worker_app
from synthesis.worker.reply import parse_multipart
from synthesis.worker.runtime import load_networks
from synthesis.worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
OFF = {"refine_weights": None, "transform_weights": None, "ordering_weights": None}


@pytest.fixture(scope="module")
def service(val_bank_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        yield c


@pytest.fixture(scope="module")
def worker(service: TestClient, tiny_weights: Path) -> Iterator[TestClient]:
    """The worker app, retrieving through the service's test client."""
    networks = Networks(ImageGenerator.from_pretrained(tiny_weights))
    app = create_worker_app(WorkerSettings(threads=1), client=RetrievalClient(http=service), networks=networks)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def wait_ready(c: TestClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, c.get("/readyz").json()
        time.sleep(0.02)


def request(layout: np.ndarray, **options: object) -> dict:
    return {"layout_png": base64.b64encode(encode_layout_png(layout)).decode(), **options}


def test_health(worker: TestClient, val_bank: Bank) -> None:
    assert worker.get("/livez").json() == {"status": "ok"}
    assert worker.get("/readyz").json() == {"ready": True, "version": val_bank.version, "message": "ready"}


def test_synthesize_formats(worker: TestClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[6])
    png = worker.post("/synthesize", json=request(layout, seed=4))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-sims-bank-version"] == val_bank.version and "network;dur=" in png.headers["server-timing"]
    body = worker.post("/synthesize", json=request(layout, seed=4, extras=["segments"])).json()
    assert base64.b64decode(body["image_png"]) == png.content
    assert body["segments"] and all(0 <= s["segment_id"] < val_bank.num_segments for s in body["segments"])
    assert [s["rank"] for s in body["segments"]] == list(range(len(body["segments"])))
    multi = worker.post("/synthesize", json=request(layout, seed=4, extras=["layout"], format="multipart"))
    parts = parse_multipart(multi.content, multi.headers["content-type"])
    assert parts["image"] == png.content and set(parts) == {"image", "layout", "meta"}


def test_worker_refuses_bad_requests(worker: TestClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[0])
    r = worker.post("/synthesize", json=request(layout, k=0))
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = worker.post("/synthesize", json=request(layout[:50]))
    assert r.status_code == 422 and r.json()["error"] == "wrong_layout_size"
    r = worker.post("/synthesize", json=request(layout, coarse=True))  # this worker has no refiner
    assert r.status_code == 422 and "refiner" in r.json()["message"]
    r = worker.post("/synthesize", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_worker_without_a_service_is_not_ready(tiny_weights: Path, val_bank: Bank) -> None:
    settings = WorkerSettings(service_url="http://127.0.0.1:9", weights=tiny_weights, service_timeout=0.5, **OFF)
    with TestClient(create_worker_app(settings)) as c:
        deadline = time.monotonic() + 10
        while "waiting for the retrieval service" not in (msg := c.get("/readyz").json()["message"]):
            assert time.monotonic() < deadline, msg
            time.sleep(0.02)
        assert c.get("/readyz").status_code == 503
        r = c.post("/synthesize", json=request(np.asarray(val_bank.labels[0])))
        assert r.status_code == 503 and r.json()["error"] == "worker_not_ready" and r.headers["retry-after"] == "1"


def test_worker_with_missing_weights_says_why(tmp_path: Path) -> None:
    settings = WorkerSettings(service_url="http://127.0.0.1:9", weights=tmp_path / "nope", **OFF)
    with TestClient(create_worker_app(settings)) as c:
        deadline = time.monotonic() + 10
        while "loading the networks failed" not in (msg := c.get("/readyz").json()["message"]):
            assert time.monotonic() < deadline, msg
            time.sleep(0.02)
    assert main(["worker", "--weights", str(tmp_path / "nope")]) == 2  # one line, before binding a port


def test_settings_turn_networks_off(monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> None:
    monkeypatch.setenv("SIMS_WORKER_TRANSFORM_WEIGHTS", "none")
    monkeypatch.setenv("SIMS_WORKER_ORDERING_WEIGHTS", "")
    monkeypatch.setenv("SIMS_WORKER_PORT", "9100")
    s = WorkerSettings(weights=tiny_weights, refine_weights="off")
    assert (s.transform_weights, s.ordering_weights, s.refine_weights, s.port) == (None, None, None, 9100)
    monkeypatch.delenv("SIMS_WORKER_TRANSFORM_WEIGHTS")
    assert WorkerSettings().transform_weights == Path("weights/transform")  # the default
    nets = load_networks(s)
    assert (nets.refiner, nets.aligner, nets.orderer) == (None, None, None) and nets.generator.resolution == (24, 32)
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_networks(s.model_copy(update={"weights": tiny_weights.parent / "missing"}))


# The CLI


def test_sims_synthesize_in_process(tmp_path: Path, val_bank_path: Path, tiny_weights: Path) -> None:
    layout = REPO / "examples/camvid-sample/valannot/0016E5_07959.png"
    out = tmp_path / "photo.png"
    args = ["synthesize", "--bank", str(val_bank_path), "--weights", str(tiny_weights), "-l", str(layout)]
    args += ["-o", str(out), "--n", "2", "--unlabelled", "11", "--grid", str(tmp_path / "grid.png"), "--extras"]
    args += ["--refine", "none", "--transform", "none", "--ordering", "none", "--no-progress"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    a, b = (np.asarray(Image.open(tmp_path / f"photo-seed{s}.png")) for s in (0, 1))
    assert a.shape == b.shape == (360, 480, 3)
    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "photo-seed0.canvas.png")),
        np.asarray(Image.open(tmp_path / "photo-seed1.canvas.png")),
    )
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[0] > 2 * 180 and grid.shape[1] > 4 * 240  # 2 rows, 4 columns at half size
    meta = json.loads((tmp_path / "photo-seed0.json").read_text())
    assert meta["segments"] and meta["bank_version"]


def test_sims_synthesize_needs_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["synthesize", "-l", "x.png", "-o", str(tmp_path / "y.png")])
    assert result.exit_code == 2 and "exactly one of --service" in result.output
    unreachable = ["synthesize", "-l", "x.png", "-o", str(tmp_path / "y.png"), "--service", "http://127.0.0.1:9"]
    assert main(unreachable) == 2
