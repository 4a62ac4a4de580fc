"""Issue 29, item 5: ``POST /segments/batch`` is expensive work: a key class, a size bound, streamed, admitted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from memory_bank import Bank
from retrieval_service.admission import ServiceTime
from retrieval_service.api.app import create_app
from retrieval_service.api.routes import segments as segments_route
from retrieval_service.api.routes.segments import BATCH_CHUNK, _batch, batch_size
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient


@pytest.fixture(scope="module")
def client(val_bank_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        yield c


def test_with_keys_configured_a_batch_needs_one(val_bank_path: Path) -> None:
    for keys, good in (("segments:s1,synthesize:k2", "s1"), ("*:all", "all")):
        with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, api_keys=keys))) as c:
            r = c.post("/segments/batch", json={"ids": [0, 1]})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
            assert r.headers["www-authenticate"] == "X-API-Key"
            assert c.post("/segments/batch", json={"ids": [0]}, headers={"X-API-Key": "wrong"}).status_code == 403
            r = c.post("/segments/batch", json={"ids": [0, 1]}, headers={"X-API-Key": good})
            assert r.status_code == 200 and len(r.json()["segments"]) == 2
            # Single segments stay open, as documented.
            assert c.get("/segments/0").status_code == 200
    # Keys for other classes only: the batch stays open.
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, api_keys="full:f1"))) as c:
        assert c.post("/segments/batch", json={"ids": [0]}).status_code == 200


def test_a_batch_over_the_pixel_bound_is_a_413_before_any_image_is_read(
    val_bank_path: Path, val_bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(range(40))
    pixels, images = batch_size(val_bank, ids)
    assert images >= 1 and pixels > 0
    reads: list[int] = []
    real = segments_route._crops
    monkeypatch.setattr(segments_route, "_crops", lambda *a, **k: reads.append(1) or real(*a, **k))
    settings = Settings(bank=val_bank_path, wait_for_bank=True, max_batch_pixels=pixels - 1)
    with TestClient(create_app(settings)) as c:
        r = c.post("/segments/batch", json={"ids": ids})
        assert r.status_code == 413 and r.json()["error"] == "batch_too_large", r.text
        assert str(pixels) in r.json()["message"] and "SIMS_MAX_BATCH_PIXELS" in r.json()["message"]
        assert reads == []
    settings = Settings(bank=val_bank_path, wait_for_bank=True, max_batch_pixels=pixels)
    with TestClient(create_app(settings)) as c:
        assert c.post("/segments/batch", json={"ids": ids}).status_code == 200  # the bound itself is allowed


def test_a_large_batch_is_streamed_and_equals_the_whole(client: TestClient, val_bank: Bank) -> None:
    ids = [i % val_bank.num_segments for i in range(3 * BATCH_CHUNK + 5)][::-1]  # repeats, any order
    with client.stream("POST", "/segments/batch", json={"ids": ids}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert "content-length" not in r.headers  # streamed
        parts = list(r.iter_bytes())
    body = httpx.Response(200, content=b"".join(parts)).json()
    assert body == _batch(val_bank, ids).model_dump()
    assert [s["segment_id"] for s in body["segments"]] == ids


def test_batches_are_admitted_like_other_expensive_work(client: TestClient) -> None:
    admission = client.app.state.segment_admission  # type: ignore[attr-defined]
    admission.service = ServiceTime(prior=1.0)
    held = [admission.admit(1e9, upstream=True) for _ in range(admission.limit)]
    for t in held[: admission.concurrency]:
        t.start()
    r = client.post("/segments/batch", json={"ids": [0]})
    assert r.status_code == 503 and r.json()["error"] == "segments_busy", r.text
    assert int(r.headers["retry-after"]) >= 1
    for t in held:
        t.release()
    # A deadline the batch cannot meet behind others is refused too; one it can meet is admitted.
    admission.service = ServiceTime(prior=0.5, spread=0.0)  # seconds per unit of work
    running = admission.admit(1e9, work=4.0, upstream=True)  # 2 s of work
    running.start()
    ahead = admission.admit(1e9, work=4.0, upstream=True)
    r = client.post("/segments/batch", json={"ids": [0]}, headers={"X-SIMS-Timeout": "1"})
    assert r.status_code == 503 and r.json()["error"] == "segments_busy", r.text
    assert client.post("/segments/batch", json={"ids": [0]}, headers={"X-SIMS-Timeout": "9"}).status_code == 200
    running.release()
    ahead.release()
    assert admission.admitted == 0


def test_the_client_sends_its_key_with_every_request() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key"))
        return httpx.Response(200, json={"bank_version": "v1", "segments": []})

    http = httpx.Client(base_url="http://sims", transport=httpx.MockTransport(handler))
    RetrievalClient(http=http, api_key="k1").segments([1, 2])
    RetrievalClient(http=http).segments([1])
    assert seen == ["k1", None]


def test_the_spec_lists_what_a_batch_can_answer(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/segments/batch"]["post"]["responses"]
    assert {"200", "401", "403", "404", "408", "413", "422", "429", "503"} <= set(responses)
    assert "batch_too_large" in responses["413"]["description"] and "segments_busy" in responses["503"]["description"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SegmentBatchResponse"
    }
