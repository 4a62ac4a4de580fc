"""Offline API docs: ``/docs`` and ``/redoc`` name no external URL, and every asset they load is served."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings

#: src/href attributes and the `url:` Swagger UI loads the spec from.
_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")


@pytest.fixture(scope="module")
def client() -> TestClient:
    with TestClient(create_app(Settings())) as c:  # no bank: the docs need none
        yield c


def _references(html: str) -> list[str]:
    return [a or b for a, b in _REFERENCE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_no_external_url_and_its_assets_are_served(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html
    references = _references(html)
    assert "/openapi.json" in references and len(references) >= 3, references
    for url in references:
        asset = client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert len(asset.content) > 100, url


def test_swagger_ui_sends_the_spec_nowhere(client: TestClient) -> None:
    html = client.get("/docs").text
    # The validator badge would post the spec to validator.swagger.io.
    assert '"validatorUrl": null' in html
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_pages_and_assets_stay_out_of_the_spec(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {p for p in paths if p in {"/", "/docs", "/redoc"} or p.startswith(("/docs", "/studio"))}
