"""Instance-aware segments: thing classes cut per instance, in banks and in query layouts alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from indexers.build import build_bank, with_instances
from indexers.readers import create_reader
from memory_bank import Bank, DatasetError, LayoutError, SegmentConfig, open_bank
from memory_bank.classes import IGNORE
from memory_bank.png import LayoutSpec, decode_layout, encode_instances_png, encode_layout_png
from memory_bank.segments import extract_segments
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.api.synthesis import HttpSynthesisBackend
from retrieval_service.client import RetrievalClient
from retrieval_service.engine import RetrievalEngine
from retrieval_service.query import prepare_query
from retrieval_service.types import SynthesizeOptions
from sims.cli import main
from synthesis.model_directory import save_pretrained
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.pipeline import ImageGenerator, Networks
from synthesis.remote import RemoteRetriever, bank_identity
from synthesis.worker.app import create_worker_app
from synthesis.worker.settings import WorkerSettings
from tests.conftest import TINY_SYNTHESIS

THINGS = SegmentConfig(min_area=1, instances="things", thing_classes=(1,))
PLAIN = SegmentConfig(min_area=1)
STUFF, CAR, POLE = 0, 1, 2


def cut(label: np.ndarray, instances: np.ndarray | None, config: SegmentConfig = THINGS):
    return extract_segments(label.astype(np.uint8), 3, config, instances)


# 1. The cut on constructed maps


def test_two_touching_cars_are_two_segments_and_stuff_one() -> None:
    label = np.zeros((6, 8), np.uint8)
    label[1:5, 1:4] = CAR
    label[1:5, 4:7] = CAR  # touches the first car
    inst = np.zeros((6, 8), np.int32)
    inst[1:5, 1:4], inst[1:5, 4:7] = 7, 9
    inst[0, :] = 5  # an id on stuff pixels is ignored: stuff is cut in components
    seg = cut(label, inst)
    assert seg.class_id.tolist() == [STUFF, CAR, CAR]
    assert seg.instance_id.tolist() == [0, 7, 9]
    assert seg.area.tolist() == [48 - 24, 12, 12]
    assert seg.bbox.tolist() == [[0, 0, 6, 8], [1, 1, 5, 4], [1, 4, 5, 7]]
    assert (seg.component_map[1:5, 1:4] == 2).all() and (seg.component_map[1:5, 4:7] == 3).all()
    # Without the instance map (or on a config without instances) the cars are one component.
    for plain in (cut(label, None), cut(label, inst, PLAIN)):
        assert plain.class_id.tolist() == [STUFF, CAR] and plain.area.tolist() == [24, 24]
        assert plain.instance_id.tolist() == [0, 0]


def test_a_car_split_by_a_pole_is_one_segment() -> None:
    label = np.zeros((5, 9), np.uint8)
    label[1:4, 1:8] = CAR
    label[:, 4] = POLE
    inst = np.where(label == CAR, 3, 0).astype(np.int32)
    seg = cut(label, inst)
    cars = np.flatnonzero(seg.class_id == CAR)
    assert cars.size == 1
    (i,) = cars
    assert seg.area[i] == 18 and seg.instance_id[i] == 3 and seg.bbox[i].tolist() == [1, 1, 4, 8]
    np.testing.assert_allclose(seg.centroid[i], [2.5, 4.5])
    np.testing.assert_array_equal(seg.mask(int(i)), label == CAR)
    assert (cut(label, None).class_id == CAR).sum() == 2  # in components: two pieces


def test_thing_pixels_without_instance_are_connected_components() -> None:
    label = np.zeros((6, 10), np.uint8)
    label[1:3, 1:3] = CAR  # crowd: no instance
    label[1:3, 6:8] = CAR  # crowd, apart from the first
    label[4:6, 1:9] = CAR  # one instance, touching nothing of instance 0
    label[3, 1:3] = CAR  # crowd joining the first crowd blob, touching the instance: not part of it
    inst = np.zeros((6, 10), np.int32)
    inst[4:6, 1:9] = 1
    seg = cut(label, inst)
    cars = seg.class_id == CAR
    # Class-major, then raster order of each segment's first pixel.
    assert seg.instance_id[cars].tolist() == [0, 0, 1]
    assert seg.area[cars].tolist() == [6, 4, 16]


def test_min_area_applies_to_instances_and_numbering_is_class_then_raster() -> None:
    label = np.full((6, 6), IGNORE, np.uint8)
    label[0, 0] = CAR  # instance 4, one pixel: dropped at min_area 2
    label[5, 0:3] = CAR  # instance 2, first pixel after instance 1's
    label[2, 3:6] = CAR  # instance 1
    label[4, 4:6] = STUFF
    inst = np.zeros((6, 6), np.int32)
    inst[0, 0], inst[5, 0:3], inst[2, 3:6] = 4, 2, 1
    seg = cut(label, inst, replace(THINGS, min_area=2))
    assert seg.class_id.tolist() == [STUFF, CAR, CAR]
    assert seg.instance_id.tolist() == [0, 1, 2]
    assert seg.dropped == 1 and seg.dropped_area == 1
    assert seg.component_map[0, 0] == 0


def test_bad_instance_maps() -> None:
    label = np.zeros((4, 4), np.uint8)
    with pytest.raises(LayoutError, match="instance map is 5x4"):
        cut(label, np.zeros((4, 5), np.int32))
    with pytest.raises(LayoutError, match=">= 0"):
        cut(label, np.full((4, 4), -1, np.int32))
    with pytest.raises(LayoutError, match="integer ids"):
        cut(label, np.zeros((4, 4), np.float32))


def test_config_records_instances_only_when_on() -> None:
    assert "instances" not in PLAIN.to_dict() and "thing_classes" not in PLAIN.to_dict()
    d = THINGS.to_dict()
    assert d["instances"] == "things" and d["thing_classes"] == [1]
    assert SegmentConfig.from_dict(json.loads(json.dumps(d))) == THINGS
    assert SegmentConfig.from_dict(PLAIN.to_dict()) == PLAIN
    with pytest.raises(ValueError, match="thing class"):
        SegmentConfig(instances="things")
    with pytest.raises(ValueError, match="'none' or 'things'"):
        SegmentConfig(instances="all")  # type: ignore[arg-type]


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], int, np.ndarray]:
    shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    label = draw(arrays(np.uint8, shape, elements=st.sampled_from([0, 1, 2, 3, IGNORE])))
    things = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True)))
    connectivity = draw(st.sampled_from([4, 8]))
    # One id per connected component (0 for some): then instances change nothing.
    comps = extract_segments(label, 4, SegmentConfig(min_area=1, connectivity=connectivity))  # type: ignore[arg-type]
    ids = draw(arrays(np.int32, len(comps) + 1, elements=st.integers(0, 1)))
    ids = np.where(ids > 0, np.arange(len(comps) + 1) * 10 + 1, 0).astype(np.int32)
    ids[0] = draw(st.integers(0, 1000))  # unlabelled pixels may carry any id
    return label, things, connectivity, ids[comps.component_map]


@settings(max_examples=150, deadline=None)
@given(case=labelled(), min_area=st.integers(1, 4))
def test_instances_constant_per_component_change_nothing(
    case: tuple[np.ndarray, tuple[int, ...], int, np.ndarray], min_area: int
) -> None:
    label, things, connectivity, inst = case
    plain = SegmentConfig(min_area=min_area, connectivity=connectivity)  # type: ignore[arg-type]
    a = extract_segments(label, 4, plain)
    b = extract_segments(label, 4, replace(plain, instances="things", thing_classes=things), inst)
    np.testing.assert_array_equal(a.component_map, b.component_map)
    for name in ("class_id", "bbox", "context_box", "area", "centroid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.dropped, a.dropped_area) == (b.dropped, b.dropped_area)
    # Instance segments carry their ids; the others 0.
    is_thing = np.isin(b.class_id, things)
    firsts = [inst[b.component_map == i + 1][0] for i in range(len(b))]
    np.testing.assert_array_equal(b.instance_id, np.where(is_thing, firsts, 0))


# 2. A Cityscapes-like bank built with instances

H, W = 24, 32
ROAD, POLE_ID, SKY, PERSON, CAR_ID = 7, 17, 23, 24, 26  # Cityscapes labelIds


def scene(flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """labelIds and instanceIds: two touching cars, crowd cars, a person split by a pole."""
    label = np.full((H, W), ROAD, np.uint8)
    label[:8] = SKY
    inst = label.astype(np.int32)  # < 1000: a labelId without an instance
    label[10:18, 2:10], inst[10:18, 2:10] = CAR_ID, 26000
    label[10:18, 10:18], inst[10:18, 10:18] = CAR_ID, 26001
    label[19:23, 2:10], inst[19:23, 2:10] = CAR_ID, CAR_ID  # crowd
    label[12:20, 19:27], inst[12:20, 19:27] = PERSON, 24000
    label[8:, 22:24], inst[8:, 22:24] = POLE_ID, POLE_ID
    return (label[:, ::-1].copy(), inst[:, ::-1].copy()) if flip else (label, inst)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    for i, (city, flip) in enumerate([("aachen", False), ("bremen", True)]):
        stem = f"{city}_00000{i}_000019"
        label, inst = scene(flip)
        rgb = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        write_png(root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", rgb)
        write_png(root / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png", label)
        write_png(root / "gtFine/train" / city / f"{stem}_gtFine_instanceIds.png", inst.astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def instance_bank_path(cityscapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("banks") / "cityscapes"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["index", "build", "-d", "cityscapes", "-r", str(cityscapes_root), "-o", str(out), "-j", "1",
                     "--min-area", "4", "--fine-grid", "12x16", "--instances", "auto", "--no-progress"])  # fmt: skip
    assert code == 0, printed.getvalue()
    assert "thing classes [11, 12, 13, 14, 15, 16, 17, 18] per instance" in printed.getvalue()
    return out


@pytest.fixture(scope="module")
def instance_bank(instance_bank_path: Path) -> Bank:
    return open_bank(instance_bank_path)


def train_ids(bank: Bank, raw: np.ndarray) -> np.ndarray:
    reader_lut = create_reader("cityscapes", Path(bank.manifest.sources[0].root)).lut
    return reader_lut[raw].astype(np.uint8)


def test_bank_records_the_setting_and_instance_ids(instance_bank: Bank) -> None:
    cfg = instance_bank.config
    assert cfg.instances == "things" and cfg.thing_classes == (11, 12, 13, 14, 15, 16, 17, 18)
    manifest = json.loads((instance_bank.path / "manifest.json").read_text())
    assert manifest["segments"]["instances"] == "things"
    assert manifest["segments"]["thing_classes"] == [11, 12, 13, 14, 15, 16, 17, 18]
    table = pq.read_table(instance_bank.path / "segments.parquet")
    assert str(table.schema.field("instance_id").type) == "int32"
    rows = table.filter(table["image_id"].to_numpy() == 0).to_pydict()
    cars = [(i, a) for c, i, a in zip(rows["class_id"], rows["instance_id"], rows["area"], strict=True) if c == 13]
    assert cars == [(26000, 64), (26001, 64), (0, 32)]
    people = [(i, a) for c, i, a in zip(rows["class_id"], rows["instance_id"], rows["area"], strict=True) if c == 11]
    assert people == [(24000, 48)]  # split by the pole, one segment
    assert set(np.asarray(rows["instance_id"])[~np.isin(rows["class_id"], cfg.thing_classes)]) == {0}


def test_banks_without_instances_are_unchanged(val_bank: Bank) -> None:
    manifest = json.loads((val_bank.path / "manifest.json").read_text())
    assert "instances" not in manifest["segments"] and "thing_classes" not in manifest["segments"]
    assert val_bank.config.instances == "none"
    assert (val_bank.column("instance_id") == 0).all()


def test_instances_option(cityscapes_root: Path, tmp_path: Path, sample_root: Path) -> None:
    reader = create_reader("cityscapes", cityscapes_root)
    assert with_instances(PLAIN, reader, "none").instances == "none"
    camvid = create_reader("camvid", sample_root, ["val"])
    assert with_instances(PLAIN, camvid, "auto") == PLAIN
    with pytest.raises(DatasetError, match="no instance maps"):
        with_instances(PLAIN, camvid, "things")
    # A dataset missing one instance map: a one-line error naming the file.
    missing = next(cityscapes_root.glob("gtFine/train/bremen/*_instanceIds.png"))
    data = missing.read_bytes()
    missing.unlink()
    try:
        config = with_instances(
            SegmentConfig(min_area=4, fine_grid=(12, 16)), create_reader("cityscapes", cityscapes_root), "things"
        )
        with pytest.raises(DatasetError, match=r"bremen_000001_000019_gtFine_instanceIds\.png: instance map missing"):
            build_bank(
                create_reader("cityscapes", cityscapes_root), tmp_path / "b", config=config, workers=1, progress=False
            )
    finally:
        missing.write_bytes(data)


def test_query_and_bank_cut_the_same_map_identically(instance_bank: Bank) -> None:
    raw, inst_raw = scene(flip=True)
    label, inst = train_ids(instance_bank, raw), np.where(inst_raw >= 1000, inst_raw, 0)
    query = prepare_query(label, 19, instance_bank.config, instance_bank.resolution, inst)
    bank_rows = np.flatnonzero(instance_bank.column("image_id") == 1)
    kept = np.flatnonzero(query.segments.area >= instance_bank.config.min_area)
    np.testing.assert_array_equal(query.segments.class_id[kept], instance_bank.column("class_id")[bank_rows])
    np.testing.assert_array_equal(query.segments.instance_id[kept], instance_bank.column("instance_id")[bank_rows])
    np.testing.assert_array_equal(query.segments.bbox[kept], instance_bank.column("bbox")[bank_rows])
    np.testing.assert_array_equal(query.codes.mask[kept], np.asarray(instance_bank.codes["mask"][bank_rows]))
    # The engine finds each instance segment of the image itself, exactly.
    result = RetrievalEngine.from_bank(instance_bank).retrieve(label, None, inst)
    assert len(result.components) == len(query.segments)
    for c in result.components:
        if query.segments.instance_id[c.component_id]:
            assert c.matches[0].mask_iou == pytest.approx(1.0)


def test_decode_layout_resizes_the_instance_map_with_the_layout(instance_bank: Bank) -> None:
    raw, inst_raw = scene(flip=False)
    label = train_ids(instance_bank, raw)
    big_label = np.repeat(np.repeat(label, 2, 0), 2, 1)
    big_inst = np.repeat(np.repeat(np.where(inst_raw >= 1000, inst_raw, 0), 2, 0), 2, 1)
    spec = LayoutSpec.from_manifest(instance_bank.manifest)
    from memory_bank.png import LayoutOptions

    decoded = decode_layout(
        encode_layout_png(big_label),
        spec,
        max_pixels=10**6,
        options=LayoutOptions(resize=True),
        instances=encode_instances_png(big_inst),
    )
    np.testing.assert_array_equal(decoded.label, label)
    np.testing.assert_array_equal(decoded.instances, np.where(inst_raw >= 1000, inst_raw, 0))


# 3. REST round trips


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def grey_png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_cityscapes_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny synthesis network for the 19 Cityscapes classes."""
    torch.manual_seed(0)
    config = RefinementConfig.from_dict({**TINY_SYNTHESIS, "num_classes": 19})
    return save_pretrained(CascadedRefinementNetwork.from_config(config), tmp_path_factory.mktemp("nets") / "cs", {})


@pytest.fixture(scope="module")
def client(instance_bank_path: Path, tiny_cityscapes_weights: Path) -> Iterator[TestClient]:
    settings = Settings(
        bank=instance_bank_path,
        wait_for_bank=True,
        synthesis_backend="in_process",
        synthesis_weights=tiny_cityscapes_weights,
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in ("REFINE", "TRANSFORM", "ORDERING"):
            mp.setenv(f"SIMS_WORKER_{name}_WEIGHTS", "none")
        with TestClient(create_app(settings)) as c:
            yield c


@pytest.fixture(scope="module")
def query(instance_bank: Bank) -> tuple[bytes, bytes, np.ndarray]:
    raw, inst_raw = scene(flip=False)
    inst = np.where(inst_raw >= 1000, inst_raw, 0)
    return encode_layout_png(train_ids(instance_bank, raw)), encode_instances_png(inst), inst


def classes_of(body: dict) -> list[int]:
    return [c["class_id"] for c in body["components"]]


def test_retrieve_json_and_multipart_with_instances(client: TestClient, query: tuple[bytes, bytes, np.ndarray]) -> None:
    layout, instances, _ = query
    with_json = client.post("/retrieve", json={"layout_png": b64(layout), "instances_png": b64(instances)})
    files = {"layout": ("l.png", layout, "image/png"), "instances": ("i.png", instances, "image/png")}
    with_form = client.post("/retrieve", files=files, data={"k": "5"})
    without = client.post("/retrieve", json={"layout_png": b64(layout)})
    for r in (with_json, with_form, without):
        assert r.status_code == 200, r.text
    assert with_json.json()["components"] == with_form.json()["components"]
    assert classes_of(with_json.json()).count(13) == 3 and classes_of(with_json.json()).count(11) == 1
    assert classes_of(without.json()).count(13) == 2 and classes_of(without.json()).count(11) == 2
    assert client.get("/bank").json()["instances"] == "things"


def test_instance_map_errors_are_422(client: TestClient, query: tuple[bytes, bytes, np.ndarray]) -> None:
    layout, _, inst = query
    cases = [
        (encode_instances_png(inst[:-1]), "wrong_instance_size", "instance map is 32x23"),
        (grey_png(np.zeros((H, W, 3), np.uint8)), "not_an_instance_map", "RGB"),
        (b"not a png at all, surely", "invalid_png", "instance map is not a PNG"),
    ]
    for data, error, fragment in cases:
        for r in (
            client.post("/retrieve", json={"layout_png": b64(layout), "instances_png": b64(data)}),
            client.post(
                "/retrieve", files={"layout": ("l.png", layout, "image/png"), "instances": ("i.png", data, "image/png")}
            ),
            client.post("/synthesize", json={"layout_png": b64(layout), "instances_png": b64(data)}),
        ):
            assert r.status_code == 422, r.text
            body = r.json()
            assert body["error"] == error and fragment in body["message"] and "\n" not in body["message"]
    r = client.post("/retrieve", json={"layout_png": b64(layout), "instances_png": "@@"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_base64" and "instances_png" in r.json()["message"]
    r = client.post("/retrieve", files={"layout": ("l.png", layout, "image/png")}, data={"instances": "text"})
    assert r.status_code == 422 and "must be a file" in r.json()["message"]
    two = [("layout", ("l.png", layout, "image/png")), ("layout", ("m.png", layout, "image/png"))]
    r = client.post("/retrieve", files=two)
    assert r.status_code == 400 and r.json()["error"] == "invalid_multipart"


def test_synthesize_passes_the_instance_map_through(client: TestClient, query: tuple[bytes, bytes, np.ndarray]) -> None:
    layout, instances, _ = query
    body = {"layout_png": b64(layout), "format": "json", "candidates": 1, "seed": 3}
    with_inst = client.post("/synthesize", json={**body, "instances_png": b64(instances)})
    files = {"layout": ("l.png", layout, "image/png"), "instances": ("i.png", instances, "image/png")}
    form = client.post("/synthesize", files=files, data={"format": "json", "candidates": "1", "seed": "3"})
    without = client.post("/synthesize", json=body)
    for r in (with_inst, form, without):
        assert r.status_code == 200, r.text
    assert [c["class_id"] for c in with_inst.json()["components"]].count(13) == 3
    assert [c["class_id"] for c in without.json()["components"]].count(13) == 2
    assert form.json()["image_png"] == with_inst.json()["image_png"]


def test_remote_retriever_sends_the_instance_map(
    client: TestClient, instance_bank: Bank, query: tuple[bytes, bytes, np.ndarray]
) -> None:
    _, _, inst = query
    raw, _ = scene(flip=False)
    label = train_ids(instance_bank, raw)
    remote = RetrievalClient(http=client)
    assert bank_identity(remote.bank())[1] == instance_bank.config  # a worker cuts as the bank does
    result = RemoteRetriever(remote).retrieve(label, None, inst)
    local = RetrievalEngine.from_bank(instance_bank).retrieve(label, None, inst)
    assert [c.class_id for c in result.components] == [c.class_id for c in local.components]
    assert [c.area for c in result.components] == [c.area for c in local.components]


def test_a_bank_without_instances_ignores_the_map(val_bank_path: Path, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[2])
    inst = np.arange(layout.size, dtype=np.int32).reshape(layout.shape) % 7  # anything
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        plain = c.post("/retrieve", json={"layout_png": b64(encode_layout_png(layout))})
        given = c.post(
            "/retrieve",
            json={"layout_png": b64(encode_layout_png(layout)), "instances_png": b64(encode_instances_png(inst))},
        )
    assert plain.status_code == given.status_code == 200
    assert plain.json()["components"] == given.json()["components"]


def test_the_http_worker_passes_the_instance_map_through(
    client: TestClient, tiny_cityscapes_weights: Path, query: tuple[bytes, bytes, np.ndarray], one_torch_thread: None
) -> None:
    layout, instances, _ = query
    networks = Networks(ImageGenerator.from_pretrained(tiny_cityscapes_weights))
    app = create_worker_app(WorkerSettings(threads=1), client=RetrievalClient(http=client), networks=networks)
    body = {"layout_png": b64(layout), "instances_png": b64(instances), "format": "json", "candidates": 1, "seed": 3}
    with TestClient(app) as worker:
        deadline = time.monotonic() + 20
        while worker.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, worker.get("/readyz").json()
            time.sleep(0.02)
        over_http = worker.post("/synthesize", json=body)
        bad = worker.post("/synthesize", json={**body, "instances_png": b64(b"not a png at all, surely")})
    in_process = client.post("/synthesize", json=body)
    assert over_http.status_code == in_process.status_code == 200, over_http.text
    assert over_http.json()["components"] == in_process.json()["components"]
    assert [c["class_id"] for c in over_http.json()["components"]].count(13) == 3
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_png"


def test_the_http_backend_forwards_the_instance_map() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=b"png", headers={"content-type": "image/png"})

    backend = HttpSynthesisBackend(["http://worker"], timeout=5.0, transport=httpx.MockTransport(handler))

    async def run() -> None:
        await backend.synthesize(b"layout", SynthesizeOptions(seed=1), b"instances")
        await backend.synthesize(b"layout", SynthesizeOptions(seed=1))
        await backend.close()

    asyncio.run(run())
    assert base64.b64decode(seen[0]["instances_png"]) == b"instances" and seen[1]["instances_png"] is None
    assert base64.b64decode(seen[0]["layout_png"]) == b"layout" and seen[0]["seed"] == 1


def test_sims_synthesize_instances(
    instance_bank_path: Path, tiny_cityscapes_weights: Path, query: tuple[bytes, bytes, np.ndarray], tmp_path: Path
) -> None:
    layout, instances, _ = query
    (tmp_path / "layouts").mkdir()
    (tmp_path / "layouts/a.png").write_bytes(layout)
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst/a.png").write_bytes(instances)
    args = ["synthesize", "-l", str(tmp_path / "layouts/a.png"), "--bank", str(instance_bank_path), "--no-progress",
            "-w", str(tiny_cityscapes_weights), "--refine", "none", "--transform", "none", "--ordering", "none",
            "--extras"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "-o", str(tmp_path / "plain.png")]) == 0
        assert main([*args, "-o", str(tmp_path / "file.png"), "--instances", str(tmp_path / "inst/a.png")]) == 0
        assert main([*args, "-o", str(tmp_path / "dir.png"), "--instances", str(tmp_path / "inst")]) == 0

    def cars(name: str) -> int:
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        return [s["class_id"] for s in meta["segments"]].count(13)

    assert (cars("plain"), cars("file"), cars("dir")) == (2, 3, 3)
    assert (tmp_path / "file.png").read_bytes() == (tmp_path / "dir.png").read_bytes()
    (tmp_path / "inst/a.png").unlink()
    errors = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        assert main([*args, "-o", str(tmp_path / "x.png"), "--instances", str(tmp_path / "inst")]) != 0
    assert "inst/a.png: cannot read the instance map" in errors.getvalue()


VALUES = [0, 1, 2, 3, IGNORE]


def reference_cut(label: np.ndarray, inst: np.ndarray, things: tuple[int, ...], connectivity: int) -> list:
    """(class, instance id, first pixel, mask) of every segment, the slow way (scipy per class and instance)."""
    from scipy import ndimage

    structure = np.ones((3, 3)) if connectivity == 8 else None
    out = []
    for c in range(4):
        owned = (label == c) & (inst != 0) & (c in things)
        for i in np.unique(inst[owned]):
            mask = owned & (inst == i)
            out.append((c, int(i), int(np.flatnonzero(mask)[0]), mask))
        pieces, n = ndimage.label((label == c) & ~owned, structure=structure)
        for j in range(1, n + 1):
            mask = pieces == j
            out.append((c, 0, int(np.flatnonzero(mask)[0]), mask))
    return sorted(out, key=lambda s: (s[0], s[2]))


@settings(max_examples=150, deadline=None)
@given(
    label=arrays(
        np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.sampled_from([0, 1, 2, 3, IGNORE])
    ),
    things=st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
    connectivity=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_instance_map_cuts_as_the_reference(
    label: np.ndarray, things: list[int], connectivity: int, seed: int
) -> None:
    inst = np.random.default_rng(seed).integers(0, 4, label.shape).astype(np.int32)
    config = SegmentConfig(min_area=1, connectivity=connectivity, instances="things", thing_classes=tuple(things))  # type: ignore[arg-type]
    seg = extract_segments(label, 4, config, inst)
    ref = reference_cut(label, inst, tuple(things), connectivity)
    assert [(int(c), int(i)) for c, i in zip(seg.class_id, seg.instance_id, strict=True)] == [
        (c, i) for c, i, _, _ in ref
    ]
    for n, (_, _, _, mask) in enumerate(ref):
        np.testing.assert_array_equal(seg.mask(n), mask)
        assert seg.area[n] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert seg.bbox[n].tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        np.testing.assert_allclose(seg.centroid[n], [ys.mean() + 0.5, xs.mean() + 0.5], rtol=1e-6)
