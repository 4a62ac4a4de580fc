"""CORS: off by default; on for the configured origins (Settings, ``SIMS_CORS_ORIGINS``, ``--cors-origins``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings

PAGE = "http://localhost:5173"
PREFLIGHT = {"Origin": PAGE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def test_cors_is_off_by_default() -> None:
    assert Settings().cors_origin_list == []
    with TestClient(create_app(Settings())) as client:
        response = client.get("/livez", headers={"Origin": PAGE})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options("/synthesize", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_get_cors_headers() -> None:
    settings = Settings(cors_origins=f"{PAGE}/, https://studio.example")
    assert settings.cors_origin_list == [PAGE, "https://studio.example"]
    with TestClient(create_app(settings)) as client:
        response = client.get("/livez", headers={"Origin": PAGE})
        assert response.headers["access-control-allow-origin"] == PAGE
        # The page reads the bank version and the timings of a synthesis from these headers.
        exposed = response.headers["access-control-expose-headers"].lower()
        assert {"x-sims-bank-version", "x-sims-seed", "server-timing"} <= set(exposed.replace(" ", "").split(","))
        preflight = client.options("/synthesize", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == PAGE
        assert "POST" in preflight.headers["access-control-allow-methods"]
        other = client.get("/livez", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_any_origin() -> None:
    with TestClient(create_app(Settings(cors_origins="*"))) as client:
        assert client.get("/livez", headers={"Origin": PAGE}).headers["access-control-allow-origin"] == "*"


def test_cors_origins_from_env_and_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from retrieval_service.api import server
    from sims.cli import main

    monkeypatch.setenv("SIMS_CORS_ORIGINS", PAGE)
    assert Settings().cors_origin_list == [PAGE]
    seen: list[Settings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    assert main(["serve", "--bank", str(tmp_path)]) == 0
    assert main(["serve", "--bank", str(tmp_path), "--cors-origins", "https://a.example,https://b.example"]) == 0
    from_env, from_flag = seen
    assert from_env.cors_origin_list == [PAGE]
    assert from_flag.cors_origin_list == ["https://a.example", "https://b.example"]
    for name, value in from_flag.to_env().items():  # what uvicorn's worker processes read back
        monkeypatch.setenv(name, value)
    assert Settings() == from_flag
