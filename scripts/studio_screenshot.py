"""Take docs/images/studio.png: SIMS Studio in headless Chromium after a real synthesis.

    .venv/bin/python scripts/studio_screenshot.py [--bank DIR] [--out docs/images/studio.png]

Without --bank it builds a bank of the bundled CamVid sample (train + val) in a temporary
directory. The server is `sims serve --with-worker` with the shipped networks (weights/), on a free
port; the page loads a val image's layout, gets a stroke painted over it, synthesizes, and shows a
region's candidates and a hover card. The PNG is quantized to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_studio_browser import CHROMIUM_ARGS, chromium_path  # noqa: E402  (the tests' browser setup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=Path, help="bank directory (default: build the CamVid sample's)")
    parser.add_argument("--out", type=Path, default=REPO / "docs/images/studio.png")
    parser.add_argument("--image", default="val/0016E5_08", help="file-name search for the starting layout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bank = args.bank
        if bank is None:
            from indexers.build import build_bank
            from indexers.readers import create_reader

            bank = Path(tmp) / "bank"
            reader = create_reader("camvid", REPO / "examples/camvid-sample", ["train", "val"])
            build_bank(reader, bank, workers=1, progress=False)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        cmd = [str(REPO / ".venv/bin/sims"), "serve", "--bank", str(bank), "--with-worker", "--port", str(port)]
        server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.3)
            shoot(url, args.image, args.out)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


def shoot(url: str, search: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 960})
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#image-search", search)
        page.wait_for_selector(f"#image-results[data-query='{search}'] li[data-image]")
        page.locator("#image-results li[data-image]").first.click()
        page.wait_for_function("studio.paint.undoStack.length === 1 && !studio.busy")
        # A car painted onto the road.
        page.click("#palette button[data-class='8']")
        page.fill("#brush-size", "46")
        page.dispatch_event("#brush-size", "input")
        box = page.locator("#canvas-paint").bounding_box()
        page.mouse.move(box["x"] + 0.42 * box["width"], box["y"] + 0.78 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.8 * box["height"], steps=10)
        page.mouse.up()
        page.click("#synthesize")
        page.wait_for_function("document.querySelector('#output').dataset.seq === '1' && !studio.busy")
        page.click("#variations")
        page.wait_for_function("document.querySelectorAll('#variation-strip li').length === 4 && !studio.busy")
        # Open the largest region's candidates, then hover another region for its source card.
        components = page.evaluate("studio.result.components.filter(c => c.segment_id !== null)")
        largest = max(components, key=lambda c: c["area"])
        y0, x0, y1, x1 = largest["bbox"]
        page.evaluate("window.scrollTo(0, 0); document.querySelector('#tools').scrollTop = 0")
        out_box = page.locator("#output-stage").bounding_box()
        h, w = page.evaluate("[studio.result.height, studio.result.width]")

        def at(y: float, x: float) -> tuple[float, float]:
            return out_box["x"] + x / w * out_box["width"], out_box["y"] + y / h * out_box["height"]

        page.mouse.click(*at((y0 + y1) / 2, (x0 + x1) / 2))
        page.wait_for_selector("#candidates li img")
        page.wait_for_timeout(600)  # thumbnails
        page.mouse.move(*at(0.12 * h, 0.8 * w))
        page.wait_for_selector("#hover-card:not([hidden]) img")
        page.wait_for_timeout(400)
        png = page.screenshot()
        browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


if __name__ == "__main__":
    main()
