"""``POST /synthesize`` end to end: in-process backend, HTTP workers, every error path, identical images.

A tiny random synthesis network (24x32) and the 8-image sample val bank keep it fast. Real servers
(uvicorn in threads, loopback) stand in for the worker where the HTTP hop itself is under test.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from PIL import Image

from memory_bank import IGNORE, Bank
from memory_bank.images import read_label
from memory_bank.png import decode_provenance_png, encode_layout_png, encode_provenance_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from synthesis.pipeline import SynthesisPipeline
from synthesis.worker.reply import parse_multipart
from synthesis.worker.runtime import load_networks
from tests.servers import serving
from tests.workers import http_worker, worker_env, worker_settings

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def service(val_bank_path: Path, tiny_weights: Path) -> Iterator[TestClient]:
    """The service with the in-process backend (what `sims serve --with-worker` runs)."""
    settings = Settings(
        bank=val_bank_path, wait_for_bank=True, synthesis_backend="in_process", synthesis_weights=tiny_weights
    )
    # The worker's networks besides the tiny one: those of tests/workers.py.
    with worker_env(), TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[3])


def post(client: TestClient, png: bytes, **fields: str) -> object:
    return client.post("/synthesize", files={"layout": ("layout.png", png, "image/png")}, data=fields)


def assert_error(response: object, status: int, error: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["message"], body
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return body


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Round trips (in-process backend)


def test_png_round_trip(service: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    r = post(service, encode_layout_png(layout), seed="2")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = png_array(r.content)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert r.headers["x-sims-bank-version"] == val_bank.version and r.headers["x-sims-seed"] == "2"
    steps = {part.split(";")[0].strip() for part in r.headers["server-timing"].split(",")}
    assert {"decode", "retrieve", "canvas", "network", "encode", "worker", "service"} <= steps
    again = service.post(
        "/synthesize", json={"layout_png": base64.b64encode(encode_layout_png(layout)).decode(), "seed": 2}
    )
    assert again.status_code == 200 and again.content == r.content  # JSON request, same seed: same bytes


def test_json_extras_are_consistent(service: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    r = post(service, encode_layout_png(layout), seed="1", k="3", extras="canvas,provenance,segments,layout")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["height"], body["width"], body["network_resolution"]) == (360, 480, [24, 32])
    assert body["bank_version"] == val_bank.version and body["seed"] == 1 and body["k"] == 3
    image = png_array(base64.b64decode(body["image_png"]))
    canvas = png_array(base64.b64decode(body["canvas_png"]))
    prov = decode_provenance_png(base64.b64decode(body["provenance_png"]))
    np.testing.assert_array_equal(png_array(base64.b64decode(body["layout_png"])), layout)
    assert image.shape == canvas.shape == (360, 480, 3) and prov.shape == (360, 480)
    # The provenance map names segments that exist, all of them listed as painted.
    listed = {s["segment_id"] for s in body["segments"]}
    used = set(np.unique(prov[prov >= 0]).tolist())
    assert used and used <= listed and max(listed) < val_bank.num_segments
    image_of = val_bank.column("image_id")
    for s in body["segments"]:
        assert s["image_id"] == image_of[s["segment_id"]] and s["class_name"] == val_bank.classes.names[s["class_id"]]
    # ... and the canvas shows those segments' own pixels there.
    ys, xs = np.nonzero(prov >= 0)
    for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 40)]:
        np.testing.assert_array_equal(canvas[y, x], np.asarray(val_bank.photos[int(image_of[prov[y, x]])])[y, x])
    assert isinstance(body["unfilled"], list) and set(body["timings_ms"]) >= {"retrieve", "canvas", "network"}


def test_multipart_reply(service: TestClient, layout: np.ndarray) -> None:
    r = post(service, encode_layout_png(layout), extras="canvas,provenance", format="multipart")
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/mixed; boundary=")
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert set(parts) == {"image", "canvas", "provenance", "meta"}
    assert png_array(parts["image"]).shape == (360, 480, 3)
    meta = json.loads(parts["meta"])
    assert "image_png" not in meta and meta["height"] == 360
    png = post(service, encode_layout_png(layout), extras="canvas", format="png")
    assert png.headers["content-type"] == "image/png" and png.content == parts["image"]


def test_seeds_vary_the_canvas(service: TestClient, layout: np.ndarray) -> None:
    provs = []
    for seed in ("0", "0", "5"):
        body = post(service, encode_layout_png(layout), seed=seed, extras="provenance").json()
        provs.append(decode_provenance_png(base64.b64decode(body["provenance_png"])))
    np.testing.assert_array_equal(provs[0], provs[1])
    assert not np.array_equal(provs[0], provs[2])


def test_coarse_layout_is_refined(service: TestClient) -> None:
    coarse = read_label(REPO / "examples/coarse-layouts/0016E5_08059_coarse.png")
    body = post(service, encode_layout_png(coarse), coarse="true", extras="layout").json()
    dense = png_array(base64.b64decode(body["layout_png"]))
    assert (coarse == IGNORE).any() and not (dense == IGNORE).any() and body["coarse"] is True


# Bad requests are the caller's: 4xx before any synthesis


def test_bad_layouts_and_options_are_4xx(service: TestClient, layout: np.ndarray) -> None:
    good = encode_layout_png(layout)
    assert_error(post(service, b"not a png"), 422, "invalid_png")
    assert_error(post(service, encode_layout_png(layout[:100])), 422, "wrong_layout_size", "480x360")
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((360, 480, 3), np.uint8)).save(rgb, format="PNG")
    assert_error(post(service, rgb.getvalue()), 422, "not_a_label_map")
    bad = layout.copy()
    bad[0, 0] = 40
    assert_error(post(service, encode_layout_png(bad)), 422, "invalid_layout", "40")
    assert_error(post(service, good, k="0"), 422, "invalid_request", "k")
    assert_error(post(service, good, extras="canvas,bogus"), 422, "invalid_request", "extras")
    assert_error(post(service, good, format="gif"), 422, "invalid_request", "format")
    assert_error(post(service, good, seed="-1"), 422, "invalid_request", "seed")
    assert_error(service.post("/synthesize", json={"seed": 1}), 422, "invalid_request", "layout_png")
    assert_error(service.post("/synthesize", json={"layout_png": "@@"}), 422, "invalid_base64")
    assert_error(
        service.post("/synthesize", content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"
    )
    files = {"other": ("x.png", good, "image/png")}
    assert_error(service.post("/synthesize", files=files), 422, "invalid_request", "layout")


# Workers over HTTP


def test_no_worker_configured_is_503(val_bank_path: Path, layout: np.ndarray) -> None:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        assert_error(post(c, encode_layout_png(layout)), 503, "synthesis_unavailable", "SIMS_SYNTHESIS_URL")


def test_worker_down_is_503(val_bank_path: Path, layout: np.ndarray) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=f"{url},{url}/")
    with TestClient(create_app(settings)) as c:
        r = post(c, encode_layout_png(layout))
        assert_error(r, 503, "synthesis_unavailable", "no synthesis worker is up", url)
        assert r.headers["retry-after"] == "1"
        # A bad layout is still the caller's error, worker or not.
        assert_error(post(c, encode_layout_png(layout[:10])), 422, "wrong_layout_size")


def _fake_worker(delay: float = 0.0, status: int = 200) -> FastAPI:
    app = FastAPI()

    @app.post("/synthesize")
    async def synthesize() -> JSONResponse:
        await asyncio.sleep(delay)
        if status == 200:
            return JSONResponse({"ok": True})
        return JSONResponse({"error": "boom", "message": "the fake worker failed"}, status_code=status)

    return app


def test_worker_timeout_is_504(val_bank_path: Path, layout: np.ndarray) -> None:
    with serving(_fake_worker(delay=3.0)) as url:
        settings = Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=url, synthesis_timeout=0.3)
        with TestClient(create_app(settings)) as c:
            start = time.monotonic()
            assert_error(post(c, encode_layout_png(layout)), 504, "synthesis_timeout", "0.3 s")
            assert time.monotonic() - start < 2.5


def test_worker_failures_are_relayed(val_bank_path: Path, layout: np.ndarray) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with serving(_fake_worker(status=500)) as broken, serving(_fake_worker(status=409)) as refusing:
        with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=broken))) as c:
            assert_error(post(c, encode_layout_png(layout)), 502, "synthesis_failed", "the fake worker failed")
        with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=refusing))) as c:
            assert_error(post(c, encode_layout_png(layout)), 409, "boom")
        # A dead worker is skipped for the next one.
        urls = f"{dead},{refusing}"
        with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=urls))) as c:
            for _ in range(2):
                assert_error(post(c, encode_layout_png(layout)), 409, "boom")


def test_http_worker_and_in_process_give_identical_images(
    val_bank_path: Path, val_bank: Bank, tiny_weights: Path, service: TestClient, layout: np.ndarray
) -> None:
    settings = worker_settings(tiny_weights)
    networks = load_networks(settings)
    with http_worker(val_bank_path, settings, networks) as worker_url:
        front = create_app(Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=worker_url))
        with TestClient(front) as c:
            for seed in ("0", "3"):
                over_http = post(c, encode_layout_png(layout), seed=seed, extras="provenance")
                in_process = post(service, encode_layout_png(layout), seed=seed, extras="provenance")
                assert over_http.status_code == in_process.status_code == 200, over_http.text
                a, b = over_http.json(), in_process.json()
                assert a["image_png"] == b["image_png"] and a["provenance_png"] == b["provenance_png"]
        # The pipeline called directly (what `sims synthesize --bank` runs) agrees.
        direct = networks.pipeline(SynthesisPipeline.from_bank(val_bank, tiny_weights).builder)(layout, seed=3)
        np.testing.assert_array_equal(direct.image, png_array(base64.b64decode(a["image_png"])))


def test_provenance_codec_round_trips() -> None:
    ids = np.array([[-1, 0, 1], [255, 65_536, 2**24 - 2]], np.int64)
    np.testing.assert_array_equal(decode_provenance_png(encode_provenance_png(ids)), ids)
    with pytest.raises(ValueError):
        encode_provenance_png(np.array([[2**24]]))


def test_sims_serve_with_worker_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from retrieval_service.api import server
    from retrieval_service.api.synthesis import HttpSynthesisBackend, load_backend
    from sims.cli import main

    seen: list[Settings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    args = ["serve", "--bank", str(tmp_path), "--with-worker", "--weights", str(tmp_path / "w")]
    assert main([*args, "--synthesis-timeout", "5"]) == 0
    assert main(["serve", "--bank", str(tmp_path), "--synthesis-url", "http://a:1, http://b:2/"]) == 0
    with_worker, remote = seen
    assert (with_worker.synthesis_backend, with_worker.synthesis_weights) == ("in_process", tmp_path / "w")
    assert with_worker.synthesis_timeout == 5.0 and remote.synthesis_backend is None
    assert remote.synthesis_urls == ["http://a:1", "http://b:2"]
    for name, value in with_worker.to_env().items():  # what uvicorn's worker processes read back
        monkeypatch.setenv(name, value)
    assert Settings() == with_worker
    backend = load_backend(remote, None)
    assert isinstance(backend, HttpSynthesisBackend) and backend.urls == ["http://a:1", "http://b:2"]
    assert load_backend(Settings(bank=tmp_path, synthesis_backend=None, synthesis_url=None), None) is None
    with pytest.raises(ValueError, match="no synthesis backend named 'nope'"):
        load_backend(Settings(bank=tmp_path, synthesis_backend="nope"), None)


def test_elision_options_reach_the_canvas(service: TestClient, layout: np.ndarray) -> None:
    png = encode_layout_png(layout)
    fields = {"extras": "canvas,provenance", "format": "json", "seed": "1"}
    off = post(service, png, **fields, elision_band="0")
    paper = post(service, png, **fields, elision_band="0.05", elision_rate="0.8")
    assert off.status_code == paper.status_code == 200, off.text
    a, b = off.json(), paper.json()
    assert (a["elision_band"], b["elision_band"], b["elision_rate"]) == (0.0, 0.05, 0.8)
    assert (a["height"], a["width"]) == layout.shape
    kept_off = decode_provenance_png(base64.b64decode(a["provenance_png"])) >= 0
    kept_paper = decode_provenance_png(base64.b64decode(b["provenance_png"])) >= 0
    # Without elision every pasted pixel is kept; the paper's bands take a share of them away.
    assert kept_paper.sum() < kept_off.sum() and not (kept_paper & ~kept_off).any()


@pytest.mark.parametrize("field, value", [("elision_band", "0.5"), ("elision_band", "-1"), ("elision_rate", "2")])
def test_bad_elision_options_are_422(service: TestClient, layout: np.ndarray, field: str, value: str) -> None:
    r = post(service, encode_layout_png(layout), **{field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
