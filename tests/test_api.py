"""The retrieval service's endpoints and every error path (FastAPI TestClient, the sample val bank)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.engine import RetrievalEngine
from retrieval_service.types import RetrievalOptions

KEY = "test-key"


@pytest.fixture(scope="module")
def client(val_bank_path: Path) -> Iterator[TestClient]:
    settings = Settings(bank=val_bank_path, api_key=KEY, wait_for_bank=True, max_upload_bytes=64 * 1024)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[2])


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, png: bytes, **fields: str) -> object:
    return client.post("/retrieve", files={"layout": ("layout.png", png, "image/png")}, data=fields)


def assert_error(response: object, status: int, error: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error and isinstance(body["message"], str) and body["message"]
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return body


# Health and bank


def test_livez_readyz_and_bank(client: TestClient, val_bank: Bank) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "version": val_bank.version, "message": "ready"}
    info = client.get("/bank").json()
    assert info["version"] == val_bank.version and info["available_versions"] == [val_bank.version]
    assert info["resolution"] == [360, 480] and info["ignore_value"] == 255
    assert [c["name"] for c in info["classes"]] == list(val_bank.classes.names)
    assert [c["segments"] for c in info["classes"]] == list(val_bank.manifest.counts.segments_per_class)
    assert info["counts"]["segments"] == val_bank.num_segments and info["counts"]["images"] == 8
    assert info["grids"] == {"fine_grid": [45, 60], "coarse_grids": [[23, 30], [15, 20], [9, 12]]}


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {"/retrieve", "/segments/{segment_id}", "/segments/{segment_id}/meta", "/synthesize", "/bank"}
    assert expected | {"/admin/reload", "/livez", "/readyz", "/metrics"} <= set(paths)
    body = paths["/retrieve"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["multipart/form-data"]["schema"]["properties"]["layout"]["format"] == "binary"
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    assert "image/png" in paths["/segments/{segment_id}"]["get"]["responses"]["200"]["content"]


# Retrieval


@pytest.mark.parametrize("mode", ["exact", "full"])
def test_retrieve_matches_the_engine(client: TestClient, val_bank: Bank, layout: np.ndarray, mode: str) -> None:
    r = upload(client, encode_layout_png(layout), k="3", mode=mode, seed="7", exclude_images="2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-sims-bank-version"] == body["bank_version"] == val_bank.version
    assert (body["mode"], body["k"], body["height"], body["width"]) == (mode, 3, 360, 480)
    want = RetrievalEngine.from_bank(val_bank).retrieve(
        layout,
        RetrievalOptions(k=3, mode=mode, seed=7, exclude_images=[2]),  # type: ignore[arg-type]
    )
    assert len(body["components"]) == len(want.components) > 5
    for got, ref in zip(body["components"], want.components, strict=True):
        assert (got["id"], got["class_id"], tuple(got["bbox"]), got["area"]) == (
            ref.component_id,
            ref.class_id,
            ref.bbox,
            ref.area,
        )
        assert got["class_name"] == val_bank.classes.names[ref.class_id]
        assert got["status"] == str(ref.status) and got["choice"] == ref.choice
        assert [(c["segment_id"], c["score"]) for c in got["candidates"]] == [
            (m.segment_id, m.score) for m in ref.matches
        ]
        assert all(c["image_id"] != 2 for c in got["candidates"])
        for c in got["candidates"]:
            assert c["score"] == pytest.approx(c["mask_iou"] + c["context_iou"]) and 0 <= c["score"] <= 2


def test_json_and_multipart_agree(client: TestClient, layout: np.ndarray) -> None:
    png = encode_layout_png(layout)
    multi = upload(client, png, k="2", seed="1").json()
    as_json = client.post("/retrieve", json={"layout_png": base64.b64encode(png).decode(), "k": 2, "seed": 1}).json()
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    as_url = client.post("/retrieve", json={"layout_png": data_url, "k": 2, "seed": 1}).json()
    assert multi["components"] == as_json["components"] == as_url["components"]
    assert multi["mode"] == "fast"  # the default


def test_palette_png_is_a_label_map(client: TestClient, layout: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.frombytes("P", layout.shape[::-1], layout.tobytes()).save(buf, format="PNG")  # indices = class ids
    r = upload(client, buf.getvalue(), k="1")
    assert r.status_code == 200 and len(r.json()["components"]) > 5


def test_min_area_and_empty_layout(client: TestClient, layout: np.ndarray) -> None:
    big = upload(client, encode_layout_png(layout), min_area="5000").json()["components"]
    assert {c["status"] for c in big if c["area"] < 5000} == {"below_min_area"}
    assert all(c["candidates"] == [] for c in big if c["area"] < 5000)
    blank = upload(client, encode_layout_png(np.full(layout.shape, 255, np.uint8))).json()
    assert blank["components"] == []


# Retrieval errors


def test_malformed_png(client: TestClient, layout: np.ndarray) -> None:
    assert_error(upload(client, b"not a png at all"), 422, "invalid_png", "not a PNG")
    truncated = encode_layout_png(layout)[:200]
    assert_error(upload(client, truncated), 422, "invalid_png", "could not be decoded")
    assert_error(upload(client, encode_layout_png(layout)[:20]), 422, "invalid_png", "IHDR")


def test_rgb_is_not_a_label_map(client: TestClient, layout: np.ndarray) -> None:
    rgb = np.repeat(layout[..., None], 3, axis=2)
    assert_error(upload(client, png_bytes(rgb)), 422, "not_a_label_map", "RGB PNG, not a label map")
    assert_error(upload(client, png_bytes(rgb, "RGBA")), 422, "not_a_label_map", "RGBA")
    assert_error(upload(client, png_bytes(layout, "LA")), 422, "not_a_label_map", "greyscale+alpha")


def test_wrong_size_and_unknown_class(client: TestClient, layout: np.ndarray) -> None:
    small = layout[:180, :240]
    assert_error(upload(client, encode_layout_png(small)), 422, "wrong_layout_size", "240x180", "480x360")
    raw = layout.copy()
    raw[:10, :10] = 11  # CamVid's raw "unlabelled" id, which the bank stores as 255
    raw[20:30, :10] = 42
    assert_error(upload(client, encode_layout_png(raw)), 422, "invalid_layout", "[11, 42]", "0..10", "255")


def test_sixteen_bit_values_over_255(client: TestClient, layout: np.ndarray) -> None:
    wide = layout.astype(np.uint16)
    wide[0, 0] = 300
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    assert_error(upload(client, buf.getvalue()), 422, "invalid_layout", "0..255")


def test_oversize_upload(client: TestClient) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(70 * 1024)
    assert_error(upload(client, big), 413, "payload_too_large", "65536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as the body streams
        for _ in range(20):
            yield bytes(8 * 1024)

    r = client.post("/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_layout_pixel_limit(val_bank_path: Path, layout: np.ndarray) -> None:
    settings = Settings(bank=val_bank_path, wait_for_bank=True, max_layout_pixels=1000)
    with TestClient(create_app(settings)) as c:
        assert_error(upload(c, encode_layout_png(layout)), 413, "layout_too_large", "480x360 = 172800 pixels", "1000")


def test_bad_options_and_bodies(client: TestClient, layout: np.ndarray) -> None:
    png = encode_layout_png(layout)
    assert_error(upload(client, png, k="0"), 422, "invalid_request", "k:")
    assert_error(upload(client, png, k="1000"), 422, "invalid_request", "k:")
    assert_error(upload(client, png, mode="slow"), 422, "invalid_request", "mode")
    assert_error(upload(client, png, seed="-1"), 422, "invalid_request", "seed")
    assert_error(upload(client, png, exclude_images="1,x"), 422, "invalid_request", "exclude_images")
    r = client.post("/retrieve", data={"k": "2"}, files={"other": ("a.png", png, "image/png")})
    assert_error(r, 422, "invalid_request", "'layout'")
    assert_error(client.post("/retrieve", json={"k": 2}), 422, "invalid_request", "layout_png")
    assert_error(client.post("/retrieve", json={"layout_png": "%%%"}), 422, "invalid_base64")
    bad_json = client.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad_json, 422, "invalid_request")
    extra = client.post("/retrieve", json={"layout_png": base64.b64encode(png).decode(), "colour": 1})
    assert_error(extra, 422, "invalid_request", "colour")
    raw_png = client.post("/retrieve", content=png, headers={"content-type": "image/png"})
    assert_error(raw_png, 415, "unsupported_media_type")


# Segments


def test_segment_png_alpha_is_the_mask(client: TestClient, val_bank: Bank) -> None:
    sid = int(np.argmax(val_bank.column("area")))
    r = client.get(f"/segments/{sid}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-sims-bank-version"] == val_bank.version
    rgba = np.asarray(Image.open(io.BytesIO(r.content)))
    seg = val_bank.segment(sid)
    y0, x0, y1, x1 = seg.bbox
    assert rgba.shape == (y1 - y0, x1 - x0, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], np.where(seg.crop_mask, 255, 0))
    np.testing.assert_array_equal(rgba[..., :3], seg.crop)
    assert 0 < (rgba[..., 3] == 255).sum() == seg.area


def test_segment_meta(client: TestClient, val_bank: Bank) -> None:
    sid = val_bank.num_segments - 1
    meta = client.get(f"/segments/{sid}/meta").json()
    row = val_bank.segments.slice(sid, 1).to_pylist()[0]
    assert meta["segment_id"] == sid and meta["bank_version"] == val_bank.version
    for key in ("image_id", "class_id", "local_index", "area", "source_file", "split"):
        assert meta[key] == row[key]
    assert meta["bbox"] == row["bbox"] and meta["context_box"] == row["context_box"]
    assert meta["class_name"] == val_bank.classes.names[row["class_id"]]
    same = client.get(f"/segments/{sid}/meta", params={"version": val_bank.version}).json()
    assert same == meta


def test_segment_errors(client: TestClient, val_bank: Bank) -> None:
    n = val_bank.num_segments
    assert_error(client.get(f"/segments/{n}"), 404, "segment_not_found", f"0..{n - 1}")
    assert_error(client.get(f"/segments/{n}/meta"), 404, "segment_not_found")
    assert_error(client.get("/segments/-1"), 422, "invalid_request", "segment_id")
    assert_error(client.get("/segments/abc/meta"), 422, "invalid_request")
    assert_error(client.get("/segments/0", params={"version": "v0-nope"}), 404, "version_not_found", "v0-nope")
    assert_error(client.get("/segments/0", params={"version": "../../etc"}), 404, "version_not_found")


# Synthesis, admin, metrics, routing


def test_synthesize_is_503_until_configured(client: TestClient) -> None:
    assert_error(client.post("/synthesize", json={}), 503, "synthesis_unavailable", "no synthesis worker")


def test_admin_key(client: TestClient, val_bank: Bank) -> None:
    assert_error(client.post("/admin/reload"), 401, "unauthorized", "X-API-Key")
    assert_error(client.post("/admin/reload", headers={"X-API-Key": "wrong"}), 403, "forbidden")
    r = client.post("/admin/reload", headers={"X-API-Key": KEY})
    assert r.status_code == 200
    body = r.json()
    assert body["reloaded"] is False and body["version"] == body["previous_version"] == val_bank.version
    assert "already serving" in body["message"]


def test_admin_disabled_without_a_key(val_bank_path: Path) -> None:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        assert_error(c.post("/admin/reload", headers={"X-API-Key": ""}), 403, "admin_disabled", "SIMS_API_KEY")
        assert_error(c.post("/admin/reload", headers={"X-API-Key": "anything"}), 403, "admin_disabled")


def test_metrics(client: TestClient, layout: np.ndarray, val_bank: Bank) -> None:
    upload(client, encode_layout_png(layout), k="1")
    client.get("/segments/999999")
    text = client.get("/metrics").text
    assert 'sims_http_requests_total{method="POST",route="/retrieve",status="200"}' in text
    assert 'route="/segments/{segment_id}",status="404"' in text
    assert f'sims_bank_info{{version="{val_bank.version}"}} 1.0' in text
    assert f"sims_bank_segments {float(val_bank.num_segments)}" in text
    assert 'sims_retrieve_components_total{status="ok"}' in text and "sims_ready 1.0" in text
    assert 'sims_retrieve_seconds_count{mode="fast"}' in text


def test_unknown_routes_are_json(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/retrieve"), 405, "method_not_allowed")


# Not ready


def test_not_ready_without_a_bank(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(bank=None))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False and "no bank configured" in r.json()["message"]
        assert_error(c.get("/bank"), 503, "not_ready", "SIMS_BANK")
        assert c.get("/livez").status_code == 200
    with TestClient(create_app(Settings(bank=tmp_path / "missing"))) as c:
        for _ in range(200):  # the background load fails quickly
            body = c.get("/readyz").json()
            if "failed" in body["message"]:
                break
        assert body["ready"] is False and "does not exist" in body["message"]
        assert_error(c.post("/retrieve", json={"layout_png": "AAAA"}), 503, "not_ready", "loading the bank failed")


def test_background_load_becomes_ready(val_bank_path: Path) -> None:
    with TestClient(create_app(Settings(bank=val_bank_path))) as c:
        assert c.get("/livez").status_code == 200
        for _ in range(600):
            r = c.get("/readyz")
            if r.status_code == 200:
                break
            assert r.json()["message"] == "loading the bank"
            time.sleep(0.01)
        assert r.status_code == 200 and r.json()["ready"] is True


# sims serve and settings


def test_sims_serve_wires_flags_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from retrieval_service.api import server
    from sims.cli import main

    seen: list[Settings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    monkeypatch.setenv("SIMS_WATCH_INTERVAL", "5")
    monkeypatch.setenv("SIMS_PORT", "9999")
    assert main(["serve", "--bank", str(tmp_path), "--port", "8123", "--workers", "3", "--host", "0.0.0.0"]) == 0
    (s,) = seen
    assert (s.bank, s.port, s.workers, s.host, s.watch_interval) == (tmp_path, 8123, 3, "0.0.0.0", 5.0)
    # Exported for uvicorn's worker processes, and read back identically.
    monkeypatch.setenv("SIMS_API_KEY", "k")
    s = Settings(bank=tmp_path, port=8123)
    env = s.to_env()
    assert env["SIMS_BANK"] == str(tmp_path) and env["SIMS_PORT"] == "8123" and env["SIMS_API_KEY"] == "k"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == s


def test_sims_serve_refuses_a_missing_bank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sims.cli import main

    assert main(["serve", "--bank", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_broken_multipart(client: TestClient) -> None:
    body = b"--xyz\r\n12553--xyz--\r\n"
    r = client.post("/retrieve", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 400, "invalid_multipart", "could not be parsed")
    r = client.post("/retrieve", content=b"abc", headers={"content-type": "multipart/form-data"})  # no boundary
    assert r.status_code in (400, 422) and r.json()["message"]
