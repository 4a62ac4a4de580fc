"""Issue 15, the retrieval service: keys per route class, rate limit, connection and body limits,
bounded metric labels, and 4xx (not 5xx, not object addresses) for bad inputs."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api import server
from retrieval_service.api.app import create_app
from retrieval_service.api.limits import BodyLimitsMiddleware
from retrieval_service.api.settings import Settings
from retrieval_service.http_errors import error_body

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def png(val_bank: Bank) -> bytes:
    return encode_layout_png(np.asarray(val_bank.labels[2]))


@pytest.fixture(scope="module")
def client(val_bank_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        yield c


def upload(client: TestClient, png: bytes, headers: dict[str, str] | None = None, **fields: str) -> object:
    return client.post("/retrieve", files={"layout": ("l.png", png, "image/png")}, data=fields, headers=headers)


# Item 3: bad inputs are 422s


@pytest.mark.parametrize("huge", [2**53, 2**63, 2**64])
def test_huge_ids_are_422s_not_overflows(client: TestClient, png: bytes, huge: int) -> None:
    r = upload(client, png, exclude_images=str(huge))
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    layout_png = base64.b64encode(png).decode()
    r = client.post("/retrieve", json={"layout_png": layout_png, "exclude_images": [huge]})
    assert r.status_code == 422, r.text
    assert client.post("/segments/batch", json={"ids": [huge]}).status_code == 422
    assert client.post("/retrieve", json={"layout_png": layout_png, "pins": {"0": huge}}).status_code == 422
    assert client.get(f"/segments/{huge}/meta").status_code == 422
    # The largest id JSON carries exactly (2^53 - 1) is taken: excluded, or not found.
    assert upload(client, png, exclude_images=str(2**53 - 1)).status_code == 200
    assert client.get(f"/segments/{2**53 - 1}/meta").status_code == 404


def test_misspelled_multipart_field_is_rejected_like_json(client: TestClient, png: bytes) -> None:
    r = client.post("/retrieve", json={"layout_png": base64.b64encode(png).decode(), "kk": 3})
    assert r.status_code == 422 and r.json()["details"][0]["type"] == "extra_forbidden"
    r = upload(client, png, kk="3")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["details"][0] == {
        "loc": ["form", "kk"],
        "msg": "Extra inputs are not permitted",
        "type": "extra_forbidden",
    }
    assert body["message"].startswith("kk:")
    # An option sent as a file is not silently dropped either (one file per request).
    r = client.post("/retrieve", files={"layout": ("l.png", png, "image/png"), "k": ("k.txt", b"3", "text/plain")})
    assert r.status_code == 400 and r.json()["error"] == "invalid_multipart"
    assert upload(client, png, k="2", mode="exact", min_area="10").status_code == 200


def test_messages_carry_no_object_addresses() -> None:
    body = error_body("invalid_request", "bad value <function f at 0x7f3a2b1c9d30> here")
    assert "0x" not in body["message"] and "<function f> here" in body["message"]


# Item 5: bounded metric labels


def test_made_up_methods_and_paths_share_one_series(client: TestClient) -> None:
    for i in range(30):
        client.request(f"M{i}X", "/retrieve")
        client.get(f"/nowhere/{i}")
    text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("sims_http_requests_total{")]
    assert not any("M1X" in line for line in series)
    assert any('method="other"' in line for line in series)
    assert len(series) < 15, series


# Item 7: keys per route class


def test_expensive_routes_need_their_keys_when_configured(val_bank_path: Path, png: bytes) -> None:
    settings = Settings(bank=val_bank_path, wait_for_bank=True, api_keys="synthesize:s1,full:f1,admin:a1")
    with TestClient(create_app(settings)) as c:
        # Read-only retrieval stays open.
        assert upload(c, png, mode="fast").status_code == 200
        assert upload(c, png, mode="exact").status_code == 200
        r = upload(c, png, mode="full")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "X-API-Key"
        assert upload(c, png, {"X-API-Key": "s1"}, mode="full").status_code == 403
        assert upload(c, png, {"X-API-Key": "f1"}, mode="full").status_code == 200
        assert c.post("/synthesize", json={}).status_code == 401
        assert c.post("/synthesize", json={}, headers={"X-API-Key": "f1"}).status_code == 403
        # The right key gets past the check (to the 503 of a service without a synthesis worker).
        assert c.post("/synthesize", json={}, headers={"X-API-Key": "s1"}).status_code == 503
        assert c.post("/admin/reload", headers={"X-API-Key": "s1"}).status_code == 403
        assert c.post("/admin/reload", headers={"X-API-Key": "a1"}).status_code == 200


def test_keys_are_optional_and_wildcard(val_bank_path: Path, png: bytes) -> None:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as c:
        assert upload(c, png, mode="full").status_code == 200  # local use: open by default
        assert c.post("/synthesize", json={}).status_code == 503
        assert c.post("/admin/reload", headers={"X-API-Key": "x"}).json()["error"] == "admin_disabled"
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, api_keys="*:all"))) as c:
        assert upload(c, png, {"X-API-Key": "all"}, mode="full").status_code == 200
        assert c.post("/admin/reload", headers={"X-API-Key": "all"}).status_code == 200


def test_malformed_keys_fail_at_startup_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as e:
        Settings(api_keys="synthesise:secret-value")
    assert "secret-value" not in str(e.value)
    with pytest.raises(ValidationError):
        Settings(api_keys="no-class-given")


# Item 2 (rate part): a per-client rate limit, off by default


def test_rate_limit_answers_429_with_retry_after(val_bank_path: Path) -> None:
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True, rate_limit="3/minute"))) as c:
        assert [c.get("/bank").status_code for _ in range(3)] == [200, 200, 200]
        r = c.get("/bank")
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200  # probes exempt
        assert 'status="429"' in c.get("/metrics").text


def test_rate_limit_is_off_by_default_and_checked(client: TestClient) -> None:
    assert Settings().rate_limit is None
    assert all(client.get("/bank").status_code == 200 for _ in range(50))
    with pytest.raises(ValidationError):
        Settings(rate_limit="lots")


def test_segments_batch_takes_only_post(client: TestClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = client.request(method, "/segments/batch")
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, r.text)
        assert r.json()["error"] == "method_not_allowed"
    assert client.get("/segments/abc/meta").status_code == 422  # other ids are still checked as ids


def test_the_spec_documents_the_limits_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    retrieve = paths["/retrieve"]["post"]["responses"]
    for status in ("408", "413", "429"):
        assert retrieve[status]["content"]["application/json"]["schema"] == error, status
    assert "401" in retrieve  # the route's own are kept
    assert "429" in paths["/bank"]["get"]["responses"] and "408" not in paths["/bank"]["get"]["responses"]
    assert not {"408", "413", "429"} & set(paths["/livez"]["get"]["responses"])  # exempt, no body
    # No 5xx documented but the unavailable and upstream ones.
    statuses = {s for ops in paths.values() for op in ops.values() for s in op["responses"]}
    assert {s for s in statuses if s.startswith("5")} <= {"502", "503", "504"}


# Item 6: connection limits and timeouts


def test_a_stalled_body_gets_a_408() -> None:
    async def app(scope, receive, send) -> None:  # a bare ASGI app that reads its body
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def receive() -> dict:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b"x", "more_body": True}
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    replies: list[dict] = []

    async def send(message: dict) -> None:
        replies.append(message)

    scope = {"type": "http", "headers": [], "method": "POST", "path": "/retrieve"}
    start = time.perf_counter()
    asyncio.run(BodyLimitsMiddleware(app, max_bytes=1024, chunk_timeout=0.2)(scope, receive, send))
    assert time.perf_counter() - start < 2
    assert replies[0]["status"] == 408 and b"request_timeout" in replies[1]["body"]


def test_serve_passes_connection_limits_to_uvicorn(val_bank_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr(server.os, "environ", {})
    server.serve(Settings(bank=val_bank_path, limit_concurrency=7, timeout_keep_alive=2.0))
    assert seen["limit_concurrency"] == 7 and seen["timeout_keep_alive"] == 2.0
    assert seen["http"] is server.HeadTimeoutH11Protocol
    server.serve(Settings(bank=val_bank_path, limit_concurrency=0))
    assert seen["limit_concurrency"] is None


def test_slow_request_heads_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMS_HEADER_TIMEOUT", "0.3")
    server.header_timeout.cache_clear()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(bank=None))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=server.HeadTimeoutH11Protocol, log_level="error")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            start = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server
            assert time.monotonic() - start < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as fast:
            fast.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert fast.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        uv.should_exit = True
        thread.join(10)
        server.header_timeout.cache_clear()


# Item 7: the compose file


def test_compose_publishes_the_dask_dashboard_on_loopback_only() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("dask-scheduler", "dask-worker"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
