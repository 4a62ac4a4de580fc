"""The API behind SIMS Studio (issue 14): pins and candidates, the layout options, bank browsing, batch segment reads.

Pins and candidates run on both synthesis paths: the in-process backend (`sims serve --with-worker`)
and a separate `sims worker` (uvicorn in a thread, retrieving from the service over loopback).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import test_synthesize_api
from fastapi.testclient import TestClient
from PIL import Image
from test_synthesize_api import assert_error, png_array
from typer.testing import CliRunner

from memory_bank import IGNORE, Bank
from memory_bank.images import resize_label
from memory_bank.png import decode_components_png, decode_provenance_png, decode_rgba_png, encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient
from sims.cli import build_app
from synthesis.remote import remote_builder
from synthesis.worker.runtime import load_networks
from tests.workers import http_worker, worker_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
#: The service with the in-process backend (what `sims serve --with-worker` runs), as in test_synthesize_api.
service = test_synthesize_api.service


@pytest.fixture(scope="module")
def separate(val_bank_path: Path, tiny_weights: Path) -> Iterator[TestClient]:
    """A service whose /synthesize goes to a separate worker over HTTP (the worker retrieves from a service)."""
    settings = worker_settings(tiny_weights)
    with http_worker(val_bank_path, settings, load_networks(settings)) as worker_url:
        front = create_app(Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=worker_url))
        with TestClient(front) as c:
            yield c


@pytest.fixture(params=["in_process", "separate_worker"])
def front(request: pytest.FixtureRequest) -> TestClient:
    return request.getfixturevalue("service" if request.param == "in_process" else "separate")


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[3])


def synth(client: TestClient, layout: np.ndarray | bytes, **fields: object) -> dict:
    png = layout if isinstance(layout, bytes) else encode_layout_png(layout)
    body = {"layout_png": base64.b64encode(png).decode(), "format": "json", **fields}
    r = client.post("/synthesize", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def retrieve(client: TestClient, png: bytes, **fields: str) -> object:
    return client.post("/retrieve", files={"layout": ("layout.png", png, "image/png")}, data=fields)


def rgb_png(rgb: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def repinnable(body: dict) -> tuple[dict, int]:
    """A component with a candidate other than its painted segment, and that candidate's id."""
    for c in body["components"]:
        others = [m["segment_id"] for m in c["candidates"] if m["segment_id"] != c["segment_id"]]
        if c["status"] == "ok" and others and c["area"] > 2000:
            return c, others[-1]
    raise AssertionError("no component with an alternative candidate")


# Pins and candidates


def test_pins_are_honoured_and_reproducible(front: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    base = synth(front, layout, seed=1, candidates=6, extras=["provenance", "components"])
    assert [c["index"] for c in base["components"]] == list(range(len(base["components"])))
    comp, pick = repinnable(base)
    assert all(1 <= len(c["candidates"]) <= 6 for c in base["components"] if c["status"] == "ok")
    names = val_bank.images["source_file"].to_pylist()
    for m in comp["candidates"]:
        assert m["image_name"] == names[m["image_id"]] and 0 <= m["score"] <= 2
    pins = {str(comp["index"]): pick}
    first = synth(front, layout, seed=1, pins=pins, extras=["provenance", "components"])
    again = synth(front, layout, seed=1, pins=pins, extras=["provenance", "components"])
    assert first["image_png"] == again["image_png"]  # pins + seed: byte-identical
    assert first["image_png"] != base["image_png"]
    pinned = first["components"][comp["index"]]
    assert pinned["segment_id"] == pick and pinned["pinned"] is True
    # The other components keep the seed's picks.
    for a, b in zip(base["components"], first["components"], strict=True):
        if a["index"] != comp["index"]:
            assert a["segment_id"] == b["segment_id"] and not b["pinned"]
    # The provenance names the pinned segment inside the component (the components extra maps pixels to it).
    prov = decode_provenance_png(base64.b64decode(first["provenance_png"]))
    comps = decode_components_png(base64.b64decode(first["components_png"]))
    assert comps.shape == prov.shape == layout.shape
    assert (prov[comps == comp["index"] + 1] == pick).any()
    # Listing candidates never changes the image.
    plain = synth(front, layout, seed=1)
    assert plain["image_png"] == base["image_png"]


def test_both_paths_pin_identically(service: TestClient, separate: TestClient, layout: np.ndarray) -> None:
    comp, pick = repinnable(synth(service, layout, seed=2, candidates=4))
    fields = {"seed": 2, "pins": {str(comp["index"]): pick}, "candidates": 4}
    a, b = synth(service, layout, **fields), synth(separate, layout, **fields)
    assert a["image_png"] == b["image_png"] and a["components"] == b["components"]


def test_multipart_pins(service: TestClient, layout: np.ndarray) -> None:
    comp, pick = repinnable(synth(service, layout, seed=0, candidates=4))
    files = {"layout": ("layout.png", encode_layout_png(layout), "image/png")}
    data = {"seed": "0", "pins": json.dumps({str(comp["index"]): pick}), "format": "json"}
    r = service.post("/synthesize", files=files, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["components"][comp["index"]]["segment_id"] == pick
    assert_error(service.post("/synthesize", files=files, data={"pins": "[1, 2]"}), 422, "invalid_request", "pins")
    assert_error(service.post("/synthesize", files=files, data={"pins": "{"}), 422, "invalid_request", "pins")


def test_bad_pins_are_refused(front: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    body = synth(front, layout, seed=0)
    comp = next(c for c in body["components"] if c["status"] == "ok")
    other_class = int(np.flatnonzero(val_bank.column("class_id") != comp["class_id"])[0])
    png = base64.b64encode(encode_layout_png(layout)).decode()

    def pinned(pins: object) -> object:
        return front.post("/synthesize", json={"layout_png": png, "pins": pins})

    assert_error(pinned({str(comp["index"]): other_class}), 422, "pin_class_mismatch", f"segment {other_class}")
    assert_error(pinned({str(comp["index"]): val_bank.num_segments + 5}), 422, "unknown_segment")
    assert_error(pinned({str(len(body["components"])): 0}), 422, "invalid_pin", "components")
    assert_error(pinned({"x": 0}), 422, "invalid_request", "pins")
    assert_error(pinned({"0": -1}), 422, "invalid_request", "pins")
    assert_error(front.post("/synthesize", json={"layout_png": png, "candidates": 101}), 422, "invalid_request")


# Layout options


def test_layout_resize(service: TestClient, layout: np.ndarray) -> None:
    big = resize_label(layout, (720, 960))
    assert_error(retrieve(service, encode_layout_png(big)), 422, "wrong_layout_size", "layout_resize=true")
    r = retrieve(service, encode_layout_png(big), layout_resize="true", seed="1")
    want = retrieve(service, encode_layout_png(layout), seed="1")
    assert r.status_code == 200, r.text
    assert r.json()["components"] == want.json()["components"]  # 2x nearest up, then down: the same layout
    body = synth(service, big, layout_resize=True, seed=1, extras=["provenance", "components", "layout", "canvas"])
    assert (body["height"], body["width"]) == (720, 960)
    assert png_array(base64.b64decode(body["image_png"])).shape == (720, 960, 3)
    assert png_array(base64.b64decode(body["canvas_png"])).shape == (720, 960, 3)
    np.testing.assert_array_equal(png_array(base64.b64decode(body["layout_png"])), big)
    comps = decode_components_png(base64.b64decode(body["components_png"]))
    assert comps.shape == (720, 960)
    first = body["components"][0]
    y0, x0, y1, x1 = first["bbox"]
    assert (comps[y0:y1, x0:x1] == 1).any() and not (np.delete(comps, np.s_[y0:y1], axis=0) == 1).any()
    odd = resize_label(layout, (100, 130))
    assert synth(service, odd, layout_resize=True)["width"] == 130


def test_layout_colors(service: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    painted = val_bank.classes.palette()[layout]  # unlabelled (255) is black
    assert_error(retrieve(service, rgb_png(painted)), 422, "not_a_label_map", "layout_colors=true")
    want = retrieve(service, encode_layout_png(layout), seed="2").json()["components"]
    # A palette PNG in other indices than the class ids: its colours decide.
    shuffled = np.where(layout == IGNORE, 0, layout + 1).astype(np.uint8)
    palette_png = Image.fromarray(shuffled, mode="P")
    palette_png.putpalette([0, 0, 0, *val_bank.classes.palette()[: len(val_bank.classes)].ravel().tolist()])
    buf = io.BytesIO()
    palette_png.save(buf, format="PNG")
    for png in (rgb_png(painted), rgb_png(painted, "RGBA"), buf.getvalue()):
        r = retrieve(service, png, layout_colors="true", seed="2")
        assert r.status_code == 200, r.text
        assert r.json()["components"] == want
    stray = painted.copy()
    stray[:3, :5] = (1, 2, 3)
    assert_error(
        retrieve(service, rgb_png(stray), layout_colors="true"), 422, "unknown_color", "(1, 2, 3)", "15 pixels"
    )
    body = synth(service, rgb_png(painted), layout_colors=True, seed=2)
    assert body["image_png"] == synth(service, layout, seed=2)["image_png"]


def test_dataset_ids(service: TestClient, layout: np.ndarray, sample_root: Path) -> None:
    assert service.get("/bank").json()["dataset_unlabelled_ids"] == {"11": "camvid"}
    raw = np.where(layout == IGNORE, 11, layout).astype(np.uint8)
    assert_error(retrieve(service, encode_layout_png(raw)), 422, "invalid_layout", "camvid", "dataset_ids=true")
    got = retrieve(service, encode_layout_png(raw), dataset_ids="true", seed="4")
    assert got.status_code == 200, got.text
    assert got.json()["components"] == retrieve(service, encode_layout_png(layout), seed="4").json()["components"]
    bad = raw.copy()
    bad[0, 0] = 42
    assert_error(retrieve(service, encode_layout_png(bad), dataset_ids="true"), 422, "invalid_layout", "[42]")
    assert synth(service, raw, dataset_ids=True, seed=0)["image_png"] == synth(service, layout, seed=0)["image_png"]


def test_sims_synthesize_layout_options(
    tmp_path: Path, val_bank_path: Path, tiny_weights: Path, sample_root: Path
) -> None:
    raw = np.asarray(Image.open(sample_root / "valannot/0016E5_07959.png"))  # CamVid ids, 11 unlabelled
    big = tmp_path / "big.png"
    big.write_bytes(encode_layout_png(resize_label(raw, (720, 960))))
    out = tmp_path / "photo.png"
    args = ["synthesize", "--bank", str(val_bank_path), "--weights", str(tiny_weights), "-l", str(big), "-o", str(out)]
    args += ["--refine", "none", "--transform", "none", "--ordering", "none", "--no-progress"]
    refused = CliRunner().invoke(build_app(), args)
    assert refused.exit_code != 0 and "layout_resize" in str(refused.exception)
    result = CliRunner().invoke(build_app(), [*args, "--layout-resize", "--dataset-ids", "--extras"])
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out)).shape == (720, 960, 3)
    assert np.asarray(Image.open(tmp_path / "photo.canvas.png")).shape == (720, 960, 3)


# Bank browsing


def test_images_search_and_pages(service: TestClient, val_bank: Bank) -> None:
    names = val_bank.images["source_file"].to_pylist()
    everything = service.get("/images").json()
    assert everything["total"] == len(names) == 8
    assert [i["name"] for i in everything["images"]] == names
    stem = Path(names[5]).stem
    found = service.get("/images", params={"q": stem.upper()}).json()
    assert found["total"] == 1 and found["images"] == [{"image_id": 5, "name": names[5]}]
    page = service.get("/images", params={"limit": 3, "offset": 6}).json()
    assert page["total"] == 8 and [i["image_id"] for i in page["images"]] == [6, 7]
    assert service.get("/images", params={"q": "no-such-file"}).json() == {"total": 0, "images": []}
    assert_error(service.get("/images", params={"limit": 0}), 422, "invalid_request", "limit")
    assert_error(service.get("/images", params={"offset": -1}), 422, "invalid_request", "offset")


def test_image_layout_and_photo(service: TestClient, val_bank: Bank) -> None:
    r = service.get("/images/2/layout")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(png_array(r.content), np.asarray(val_bank.labels[2]))
    photo = service.get("/images/2/photo", params={"size": 200})
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(photo.content)).size == (200, 150)
    assert Image.open(io.BytesIO(service.get("/images/2/photo").content)).size == (160, 120)
    assert_error(service.get("/images/8/layout"), 404, "image_not_found", "0..7")
    assert_error(service.get("/images/99/photo"), 404, "image_not_found")
    assert_error(service.get("/images/2/photo", params={"size": 8}), 422, "invalid_request", "size")
    assert_error(service.get("/images/-1/layout"), 422, "invalid_request")


def test_segment_thumbnail(service: TestClient, val_bank: Bank) -> None:
    sid = int(np.argmax(val_bank.column("area")))
    seg = val_bank.segment(sid)
    h, w = seg.crop.shape[:2]
    r = service.get(f"/segments/{sid}/thumbnail", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rgba = decode_rgba_png(r.content)
    assert max(rgba.shape[:2]) == 64 and rgba.shape[2] == 4
    assert abs(rgba.shape[0] / rgba.shape[1] - h / w) < 0.1
    assert (rgba[..., 3] > 0).any()
    assert max(decode_rgba_png(service.get(f"/segments/{sid}/thumbnail").content).shape[:2]) == 96
    assert_error(service.get(f"/segments/{val_bank.num_segments}/thumbnail"), 404, "segment_not_found")
    assert_error(service.get(f"/segments/{sid}/thumbnail", params={"size": 2000}), 422, "invalid_request")


# One request for a layout's segments


def test_segment_batch(service: TestClient, val_bank: Bank) -> None:
    client = RetrievalClient(http=service)
    ids = [17, 0, val_bank.num_segments - 1, 17]
    got = client.segments(ids)
    assert got.bank_version == val_bank.version and [s.segment_id for s in got.segments] == ids
    for item in got.segments:
        ref = val_bank.segment(item.segment_id)
        rgba = decode_rgba_png(base64.b64decode(item.crop_png))
        np.testing.assert_array_equal(np.where(rgba[..., 3:] > 0, rgba[..., :3], 0), ref.crop)
        np.testing.assert_array_equal(rgba[..., 3] > 0, ref.crop_mask)
        assert tuple(item.bbox) == ref.bbox and item.class_id == ref.class_id
    assert client.segments([]).segments == []
    r = service.post("/segments/batch", json={"ids": [0, val_bank.num_segments]})
    assert_error(r, 404, "segment_not_found")
    assert_error(service.post("/segments/batch", json={"ids": [-1]}), 422, "invalid_request")
    assert_error(service.post("/segments/batch", json={"ids": "0"}), 422, "invalid_request")


def test_a_remote_canvas_reads_its_segments_in_one_request(service: TestClient, layout: np.ndarray) -> None:
    seen: list[str] = []
    service.event_hooks["request"].append(lambda request: seen.append(request.url.path))
    try:
        builder = remote_builder(RetrievalClient(http=service))
        seen.clear()
        canvas = builder(layout, seed=3)
    finally:
        service.event_hooks["request"].pop()
    assert canvas.segments and seen == ["/retrieve", "/segments/batch"]
