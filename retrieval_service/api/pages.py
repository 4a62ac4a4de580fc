"""The pages a browser gets from the service: SIMS Studio at ``/`` and the API docs, all served offline.

Studio is plain HTML, CSS and ES modules in ``retrieval_service/api/studio/`` (package data; no build
step). The docs pages (``/docs``: Swagger UI, ``/redoc``) load their scripts from the assets that the
``fastapi-offline`` package ships, served under ``/docs-assets``, so they work without internet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

#: The page's files (index.html, studio.css and its modules).
STUDIO_DIR = Path(__file__).with_name("studio")
STUDIO_URL = "/studio"
DOCS_ASSETS_URL = "/docs-assets"
#: Swagger UI 5 and ReDoc bundles, shipped by fastapi-offline (a dependency) for exactly this use.
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))


def install_studio(app: FastAPI) -> None:
    """Serve the Studio page at ``/`` and its assets under ``/studio``."""
    app.mount(STUDIO_URL, StaticFiles(directory=STUDIO_DIR), name="studio")

    @app.get("/", include_in_schema=False)
    async def studio_page() -> FileResponse:
        # no-cache: revalidate, so that a new release's page is never mixed with old cached modules.
        return FileResponse(STUDIO_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_offline_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` on local assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    oauth2_redirect_url = "/docs/oauth2-redirect"
    _docs_page(
        app,
        "/docs",
        get_swagger_ui_html,
        title="Swagger UI",
        name="swagger_ui",
        urls={
            "swagger_js_url": f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            "swagger_css_url": f"{DOCS_ASSETS_URL}/swagger-ui.css",
            "swagger_favicon_url": f"{DOCS_ASSETS_URL}/favicon.png",
            "oauth2_redirect_url": oauth2_redirect_url,
        },
        # No validator badge: it would send the spec to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    _docs_page(
        app,
        "/redoc",
        get_redoc_html,
        title="ReDoc",
        name="redoc",
        urls={
            "redoc_js_url": f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            "redoc_favicon_url": f"{DOCS_ASSETS_URL}/favicon.png",
        },
        with_google_fonts=False,
    )


def _docs_page(
    app: FastAPI,
    path: str,
    render: Callable[..., HTMLResponse],
    *,
    title: str,
    name: str,
    urls: Mapping[str, str],
    **options: Any,
) -> None:
    """Serve the docs page of the app's spec that ``render`` draws at ``path`` (route ``name``), titled
    ``"<app title> - <title>"``.

    ``urls`` (``render``'s keyword -> a path of this app) and the spec's URL are prefixed with the request's
    root path, so the page works behind a proxy that mounts the service under a prefix; ``options`` are passed
    as they are.
    """
    urls = {"openapi_url": app.openapi_url or "/openapi.json", **urls}

    async def page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return render(title=f"{app.title} - {title}", **{k: f"{root}{v}" for k, v in urls.items()}, **options)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False, name=name)
