"""SIMS Studio in a real headless Chromium (Playwright on the system's browser), against a real server.

The server is what `sims serve --with-worker` runs (uvicorn in a thread, the in-process backend, the
8-image sample val bank, the shipped synthesis network). The page is driven like a person would:
paint strokes of two classes, synthesize, click a region, pin another candidate, synthesize again,
download the JSON record and load it back.

Chromium comes from the system (scripts/test.sh installs Debian's). Without it these tests skip
locally and fail under CI (CI=true), so that a CI run never passes them by not running them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage

from retrieval_service.api.app import create_app
from retrieval_service.api.pages import STUDIO_DIR
from retrieval_service.api.settings import Settings
from synthesis.worker.runtime import load_networks
from tests.servers import serving
from tests.workers import http_worker, worker_env, worker_settings

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
#: Flags for Chromium as root on a machine without a display or an outside network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BUILDING, TREE = 1, 5
#: The shipped synthesis network: it keeps the canvas's real pixels, so a pinned segment's change stays local.
SHIPPED_SYNTHESIS = REPO / "weights/synthesis"
TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    """The system Chromium: $SIMS_CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("SIMS_CHROMIUM"):
        return shutil.which(os.environ["SIMS_CHROMIUM"])
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} (CI must run the browser tests: scripts/test.sh installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium on this machine (apt-get install chromium, or set SIMS_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def studio_url(val_bank_path: Path) -> Iterator[str]:
    """`sims serve --with-worker` on the sample val bank: the in-process worker."""
    settings = Settings(
        bank=val_bank_path, wait_for_bank=True, synthesis_backend="in_process", synthesis_weights=SHIPPED_SYNTHESIS
    )
    # The worker's other networks: those of tests/workers.py (the shipped refiner, no T, the layout rule).
    with worker_env(), serving(create_app(settings)) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def worker_studio_url(val_bank_path: Path) -> Iterator[str]:
    """`sims serve --synthesis-url` on the same bank, with a separate `sims worker` (retrieving from the service)."""
    settings = worker_settings(SHIPPED_SYNTHESIS)
    with http_worker(val_bank_path, settings, load_networks(settings)) as worker_url:
        front = Settings(bank=val_bank_path, wait_for_bank=True, synthesis_url=worker_url)
        with serving(create_app(front)) as url:
            yield url + "/"


def open_page(browser: Any, url: str) -> Iterator[Any]:
    """A fresh page on ``url``, offline: a request off the server, or an uncaught error, fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    external: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(url):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    yield pg
    context.close()
    assert not errors, errors
    assert not external, external


@pytest.fixture
def page(browser: Any, studio_url: str) -> Iterator[Any]:
    yield from open_page(browser, studio_url)


@pytest.fixture
def worker_page(browser: Any, worker_studio_url: str) -> Iterator[Any]:
    yield from open_page(browser, worker_studio_url)


# Helpers


def box_of(page: Any, selector: str) -> dict[str, float]:
    """The element's box in the viewport, scrolled into view first (mouse events use viewport coordinates)."""
    locator = page.locator(selector)
    locator.scroll_into_view_if_needed()
    return locator.bounding_box()


def stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """Drag the brush along ``points``, given as fractions (x, y) of the layout canvas."""
    box = box_of(page, "#canvas-paint")
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def click_fraction(page: Any, selector: str, fx: float, fy: float) -> None:
    box = box_of(page, selector)
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


#: The painted label map as base64 (a JS array of 170k numbers would take seconds to cross over).
_LABELS_B64 = """() => {
    const a = studio.paint.labels;
    let s = "";
    for (let i = 0; i < a.length; i += 0x8000) s += String.fromCharCode(...a.subarray(i, i + 0x8000));
    return [studio.paint.height, studio.paint.width, btoa(s)];
}"""


def labels(page: Any) -> np.ndarray:
    """The label map the page holds (what it would send)."""
    h, w, b64 = page.evaluate(_LABELS_B64)
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w)


def wait_for_result(page: Any, after: int) -> int:
    """Wait until the output shows a result newer than ``after``; answer its sequence number."""
    page.wait_for_function(
        f"Number(document.querySelector('#output').dataset.seq) > {after} && "
        "document.querySelector('#status').dataset.state !== 'busy'",
        timeout=TIMEOUT_MS,
    )
    assert page.get_attribute("#status", "data-state") == "idle", page.inner_text("#status")
    return int(page.get_attribute("#output", "data-seq"))


def output_image(page: Any) -> bytes:
    src = page.get_attribute("#output", "src")
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.split(",", 1)[1])


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def result_png(page: Any, field: str) -> np.ndarray:
    return png_array(base64.b64decode(page.evaluate(f"studio.result.body.{field}")))


# Tests


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The point of ``mask`` farthest from its edge, as fractions (x, y) of the frame."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(depth.argmax()), mask.shape)
    return (x + 0.5) / mask.shape[1], (y + 0.5) / mask.shape[0]


def paint_over_a_bank_image(page: Any) -> np.ndarray:
    """Start from a bank image's layout, paint strokes of two classes over it; answer the label map."""
    page.fill("#image-search", "0016E5_08")
    page.wait_for_selector("#image-results[data-query='0016E5_08'] li[data-image]")
    page.locator("#image-results li[data-image]").first.click()
    page.wait_for_function("studio.paint.undoStack.length === 1 && !studio.busy", timeout=TIMEOUT_MS)
    start = labels(page)
    page.fill("#brush-size", "40")
    page.dispatch_event("#brush-size", "input")
    page.click(f"#palette button[data-class='{BUILDING}']")
    stroke(page, [(0.55, 0.25), (0.6, 0.3), (0.65, 0.25)])
    page.click(f"#palette button[data-class='{TREE}']")
    stroke(page, [(0.9, 0.7), (0.95, 0.75)])
    painted = labels(page)
    assert (painted != start).any() and {BUILDING, TREE} <= set(painted[painted != start].tolist())
    return painted


def pin_an_alternative(page: Any, seq: int) -> tuple[int, np.ndarray, int, int]:
    """Click the largest filled region on the output and pin the other candidate that fits it best.

    Answers the region's index and mask, and the segment ids in use before and pinned.
    """
    components = result_png(page, "components_png")
    filled = [c for c in page.evaluate("studio.result.components") if c["segment_id"] is not None]
    target = max(filled, key=lambda c: c["area"])
    index = target["index"]
    region = components == index + 1
    click_fraction(page, "#output-stage", *interior_point(region))
    page.wait_for_selector("#candidates li[data-segment]")
    assert page.evaluate("studio.selected") == index
    in_use = int(page.get_attribute("#candidates li.chosen", "data-segment"))
    assert in_use == target["segment_id"]
    others = [c for c in target["candidates"] if c["segment_id"] != in_use]
    pinned = max(others, key=lambda c: c["mask_iou"])["segment_id"]
    page.click(f"#candidates li[data-segment='{pinned}']")
    page.click("#pin")
    wait_for_result(page, seq)
    assert (result_png(page, "components_png") == components).all()  # same layout, same components
    return index, region, in_use, pinned


def test_paint_synthesize_pin_and_reproduce(page: Any, tmp_path: Path) -> None:
    # 1. Paint: start from a bank image's layout, then strokes of two classes over it.
    painted = paint_over_a_bank_image(page)
    h, w = painted.shape

    # 2. Synthesize.
    page.click("#synthesize")
    seq = wait_for_result(page, 0)
    before = png_array(output_image(page)).astype(np.int32)
    assert before.shape == (h, w, 3)

    # 3. Click a region and pin a different candidate: synthesized again with the same seed.
    index, region, _, pinned = pin_an_alternative(page, seq)
    seq = int(page.get_attribute("#output", "data-seq"))
    after = png_array(output_image(page)).astype(np.int32)

    # 4. The output changed inside the region, and most of the change lies in the region and its boundary band.
    band = ndimage.binary_dilation(region, iterations=int(0.05 * h))
    change = np.abs(after - before).sum(axis=2)
    assert change[region].mean() > 10, change[region].mean()
    share = change[band].sum() / change.sum()
    assert share > 0.5, f"only {share:.0%} of the change lies in the pinned region and its band"

    # 5. The provenance names the pinned segment: the list, the response and the provenance map.
    item = page.locator(f"#provenance-list li[data-component='{index}']")
    assert item.get_attribute("data-segment") == str(pinned) and f"#{pinned}" in item.inner_text()
    component = page.evaluate(f"studio.result.component({index})")
    assert component["segment_id"] == pinned and component["pinned"] is True
    provenance = result_png(page, "provenance_png").astype(np.int64)
    ids = (provenance[..., 0] << 16) + (provenance[..., 1] << 8) + provenance[..., 2] - 1
    assert (ids == pinned).any()

    # 6. Download the JSON record, start over, load it back: the same image, bit for bit.
    image = output_image(page)
    with page.expect_download() as download:
        page.click("#download-json")
    path = tmp_path / "record.json"
    download.value.save_as(path)
    record = json.loads(path.read_text())
    assert record["pins"] == {str(index): pinned}
    assert record["size"] == [h, w] and record["bank_version"] == page.evaluate("studio.bank.version")
    regions = {r["component"]: r for r in record["provenance"]}
    assert regions[index]["segment_id"] == pinned and regions[index]["pinned"] is True
    assert all(r["segment_id"] is not None for r in regions.values() if r["status"] == "ok")
    page.click("#new-empty")
    page.fill("#seed", "12345")
    page.set_input_files("#load-json", str(path))
    wait_for_result(page, seq)
    assert output_image(page) == image
    assert page.get_attribute("#output", "data-reproduced") == "true"
    assert (labels(page) == painted).all()
    assert page.evaluate("studio.pins") == {str(index): pinned}


def test_pin_through_a_separate_worker(worker_page: Any, studio_url: str) -> None:
    """The page works the same against `sims worker`: pins apply, and the image is the in-process one."""
    page = worker_page
    paint_over_a_bank_image(page)
    page.click("#synthesize")
    seq = wait_for_result(page, 0)
    index, _, _, pinned = pin_an_alternative(page, seq)
    assert page.get_attribute(f"#provenance-list li[data-component='{index}']", "data-segment") == str(pinned)
    request = page.evaluate("studio.result.request")
    in_process = httpx.post(
        studio_url + "synthesize", json={**request, "format": "json"}, timeout=TIMEOUT_MS / 1000
    ).json()
    assert base64.b64decode(in_process["image_png"]) == output_image(page)


def test_undo_redo_and_eraser(page: Any) -> None:
    empty = labels(page)
    page.click(f"#palette button[data-class='{BUILDING}']")
    stroke(page, [(0.3, 0.5), (0.7, 0.5)])
    once = labels(page)
    assert (once == BUILDING).sum() > 100 and (empty == 255).all()
    page.click("#tool-eraser")
    stroke(page, [(0.5, 0.3), (0.5, 0.7)])
    erased = labels(page)
    assert (erased == BUILDING).sum() < (once == BUILDING).sum()
    page.keyboard.press("Control+z")
    assert (labels(page) == once).all()
    page.keyboard.press("Control+z")
    assert (labels(page) == empty).all()
    page.keyboard.press("Control+Shift+z")
    assert (labels(page) == once).all()
    page.keyboard.press("Control+y")
    assert (labels(page) == erased).all()


def test_start_from_a_bank_image(page: Any, val_bank_path: Path) -> None:
    from memory_bank import open_bank

    bank = open_bank(val_bank_path)
    image_id = load_bank_image(page, "0016E5")
    assert (labels(page) == np.asarray(bank.labels[image_id])).all()


def load_bank_image(page: Any, query: str) -> int:
    """Search the bank images for ``query``, load the first one's layout; answer its image id."""
    page.fill("#image-search", query)
    page.wait_for_selector(f"#image-results[data-query='{query}'] li[data-image]")
    first = page.locator("#image-results li[data-image]").first
    image_id = int(first.get_attribute("data-image"))
    first.click()
    page.wait_for_function("studio.sourceImage !== null && !studio.busy", timeout=TIMEOUT_MS)
    return image_id


#: The bank image behind every filled region of the shown result.
SOURCE_IMAGES = "studio.result.components.map((c) => studio.result.source(c.index)?.image_id).filter((v) => v != null)"


def test_a_bank_image_layout_excludes_its_own_photo(page: Any, val_bank_path: Path) -> None:
    """Starting from a bank image, its segments stay out of retrieval, unless the checkbox is cleared."""
    image_id = load_bank_image(page, "0016E5_08033")
    assert page.is_visible("#exclude-source-row") and page.is_checked("#exclude-source")
    assert "0016E5_08033" in page.inner_text("#exclude-source-row")
    page.fill("#k", "1")  # the best match of every region: its own photo's segment, when allowed
    page.click("#synthesize")
    seq = wait_for_result(page, 0)
    sources = page.evaluate(SOURCE_IMAGES)
    assert sources and image_id not in sources
    assert page.evaluate("studio.result.request.exclude_images") == [image_id]
    provenance_names = page.inner_text("#provenance-list")
    assert "0016E5_08033" not in provenance_names
    # The checkbox off: the photo's own segments come back (it is the best match of its own layout).
    page.uncheck("#exclude-source")
    page.click("#synthesize")
    wait_for_result(page, seq)
    sources = page.evaluate(SOURCE_IMAGES)
    assert image_id in sources
    # A new empty frame has no source image.
    page.click("#new-empty")
    assert page.evaluate("studio.sourceImage") is None and not page.is_visible("#exclude-source-row")


def test_upload_a_raw_dataset_label_of_another_size(page: Any, sample_root: Path, tmp_path: Path) -> None:
    """A CamVid label file (raw id 11 = unlabelled) at twice the bank's size: the page asks for
    layout_resize (from the PNG's header) and dataset_ids (the service's 422 names it), and paints the result."""
    raw = np.asarray(Image.open(sorted((sample_root / "valannot").glob("*.png"))[0]))
    assert (raw == 11).any()
    h, w = raw.shape
    big = np.repeat(np.repeat(raw, 2, axis=0), 2, axis=1)
    path = tmp_path / "camvid-label-720x960.png"
    Image.fromarray(big).save(path)
    page.set_input_files("#upload-layout", str(path))
    seq = wait_for_result(page, 0)
    assert seq == 1
    request = page.evaluate("studio.result.request")
    assert request["layout_resize"] is True and request["dataset_ids"] is True
    assert png_array(output_image(page)).shape == (2 * h, 2 * w, 3)
    expected = np.where(raw == 11, 255, raw)
    assert (labels(page) == expected).all()


def test_docs_render_offline(page: Any, studio_url: str) -> None:
    page.goto(studio_url + "docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS)
    assert "SIMS retrieval service" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/synthesize']")


def test_page_ships_as_package_data() -> None:
    """Every file of the page is matched by pyproject's package-data globs, so a wheel carries it."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["retrieval_service"]
    files = [p.relative_to(REPO / "retrieval_service").as_posix() for p in STUDIO_DIR.iterdir() if p.is_file()]
    assert {"api/studio/index.html", "api/studio/studio.js", "api/studio/studio.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in patterns)] == []


def test_page_and_assets_are_served() -> None:
    with TestClient(create_app(Settings())) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "https://" not in page.text and "http://" not in page.text
        for name in ("studio.js", "studio.css", "png.js", "paint.js", "results.js", "api.js"):
            asset = client.get(f"/studio/{name}")
            assert asset.status_code == 200, name
            if name.endswith(".js"):  # ES modules need a JavaScript MIME type
                assert "javascript" in asset.headers["content-type"]
                assert "https://" not in asset.text, name
        assert client.get("/studio/nope.js").status_code == 404
