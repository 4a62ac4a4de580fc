"""The typed Python client, against the app in-process (TestClient is an httpx.Client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient, ServiceError
from retrieval_service.engine import RetrievalEngine
from retrieval_service.http_models import BankInfo, RetrieveResponse, SegmentMeta
from retrieval_service.types import RetrievalOptions

KEY = "client-key"


@pytest.fixture(scope="module")
def http(val_bank_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bank=val_bank_path, api_key=KEY, wait_for_bank=True))) as c:
        yield c


@pytest.fixture(scope="module")
def client(http: TestClient) -> RetrievalClient:
    return RetrievalClient(http=http, api_key=KEY)


def test_retrieve_returns_typed_results(client: RetrievalClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[5])
    got = client.retrieve(layout, k=2, mode="exact", seed=3, exclude_images=[5, 6])
    assert isinstance(got, RetrieveResponse) and got.bank_version == val_bank.version
    want = RetrievalEngine.from_bank(val_bank).retrieve(
        layout, RetrievalOptions(k=2, mode="exact", seed=3, exclude_images=[5, 6])
    )
    assert [(c.id, c.choice, [m.segment_id for m in c.candidates]) for c in got.components] == [
        (c.component_id, c.choice, [m.segment_id for m in c.matches]) for c in want.components
    ]
    assert all(m.image_id not in (5, 6) for c in got.components for m in c.candidates)


def test_segments_bank_and_health(client: RetrievalClient, val_bank: Bank) -> None:
    sid = 10
    rgba = client.segment_rgba(sid, version=val_bank.version)
    seg = val_bank.segment(sid)
    assert rgba.shape[:2] == seg.crop.shape[:2] and rgba.shape[2] == 4
    np.testing.assert_array_equal(rgba[..., 3] == 255, seg.crop_mask)
    meta = client.segment_meta(sid)
    assert isinstance(meta, SegmentMeta) and meta.area == seg.area and tuple(meta.bbox) == seg.bbox
    info = client.bank()
    assert isinstance(info, BankInfo) and info.resolution == [360, 480] and len(info.classes) == 11
    assert client.live() and client.ready().ready and client.ready().version == val_bank.version
    assert "sims_http_requests_total" in client.metrics()
    reloaded = client.reload()
    assert reloaded.reloaded is False and reloaded.version == val_bank.version


def test_errors_carry_the_service_message(client: RetrievalClient, http: TestClient, val_bank: Bank) -> None:
    with pytest.raises(ServiceError) as e:
        client.retrieve(np.zeros((10, 10), np.uint8))
    assert e.value.status == 422 and e.value.error == "wrong_layout_size" and "480x360" in e.value.message
    with pytest.raises(ServiceError) as e:
        client.segment_meta(10**9)
    assert e.value.status == 404 and e.value.error == "segment_not_found"
    with pytest.raises(ServiceError) as e:
        RetrievalClient(http=http).reload()
    assert e.value.status == 401
    with pytest.raises(ServiceError) as e:
        RetrievalClient(http=http, api_key="nope").reload()
    assert e.value.status == 403
    with pytest.raises(ValueError, match="uint8"):
        client.retrieve(np.zeros((360, 480), np.int32))


def test_png_bytes_and_unreachable_service(client: RetrievalClient, val_bank: Bank) -> None:
    layout = np.asarray(val_bank.labels[0])
    assert client.retrieve(encode_layout_png(layout), k=1).components == client.retrieve(layout, k=1).components
    with RetrievalClient("http://127.0.0.1:9", timeout=0.5) as down:
        assert down.live() is False
