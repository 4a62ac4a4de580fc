"""The ``sims eval`` HTML gallery: self-contained, relative links to files that exist, the style in one file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memory_bank import ClassTable
from synthesis.canvas.builder import Canvas, PlacedSegment
from synthesis.evaluation.gallery import STYLESHEET, GalleryWriter, stylesheet, thumbnail
from synthesis.evaluation.image_sets import EvalItem, SetOutput

REPO = Path(__file__).resolve().parents[1]
PACKAGE_STYLESHEET = REPO / "synthesis" / "evaluation" / STYLESHEET


def _classes() -> ClassTable:
    return ClassTable.from_list([{"id": i, "name": f"c{i}", "color": [40 * i, 255 - 40 * i, 100]} for i in range(3)])


def make_canvas(rng: np.random.Generator, rows: int, cols: int) -> Canvas:
    """A canvas of two segments (ids 3 and 10) over the left and right halves, a missing strip between."""
    provenance = np.full((rows, cols), -1, np.int64)
    provenance[:, : cols // 2 - 1] = 3
    provenance[:, cols // 2 + 1 :] = 10
    missing = provenance < 0
    pixels = np.where(missing[..., None], 0, rng.integers(0, 256, (rows, cols, 3))).astype(np.uint8)
    segments = (PlacedSegment(0, 1, 3, 10, 0.75, 0), PlacedSegment(1, 2, 10, 99, 0.5, 1))
    return Canvas(pixels, missing, provenance, np.zeros((rows, cols), np.uint8), segments)


def links(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def check_page(index: Path) -> list[str]:
    """Assert the page is self-contained and styled by the package's stylesheet; returns its image links."""
    page = index.read_text()
    assert "http" not in page.lower() and "//" not in page.replace("<!DOCTYPE html>", "")
    # The style is not repeated in the page: it links the stylesheet beside it.
    assert "<style" not in page and page.count(f'<link rel="stylesheet" href="{STYLESHEET}">') == 1
    assert (index.parent / STYLESHEET).read_text() == stylesheet() == PACKAGE_STYLESHEET.read_text()
    found = links(page)
    for link in found:
        assert not link.startswith("/") and ":" not in link and ".." not in link
        assert (index.parent / link).is_file(), link
    images = [link for link in found if link != STYLESHEET]
    assert images
    return images


def test_gallery_writes_thumbnails_and_a_self_contained_page(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = GalleryWriter(tmp_path / "gallery", _classes(), rows=16, image_names=[f"src{i}.png" for i in range(20)])
    for i, name in enumerate(["0016E5_07959", "odd name/with spaces"]):
        canvas = make_canvas(rng, 24, 32)
        item = EvalItem(i, name, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), rng.integers(0, 3, (24, 32)))
        outputs = {
            "SIMS": SetOutput(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), canvas),
            "parametric": SetOutput(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)),
            "paste (canvas over parametric)": SetOutput(np.zeros((24, 32, 3), np.uint8)),
        }
        writer(item, outputs)
    index = writer.write()
    assert index == tmp_path / "gallery" / "index.html"
    found = check_page(index)
    # Per item: layout, canvas, three outputs, provenance, photo.
    assert len(found) == 2 * 7 and len(set(found)) == len(found)
    assert writer.columns() == [
        "layout",
        "canvas (SIMS)",
        "SIMS",
        "parametric",
        "paste (canvas over parametric)",
        "provenance (a colour per bank segment)",
        "real photo",
    ]
    page = index.read_text()
    assert "paste (canvas over parametric)" in page and "odd name/with spaces" in page
    # Segment lists: id, class name, source image (named when the bank's names are known), score.
    assert "<summary>2 segments</summary>" in page and "<td>c1</td>" in page and "<td>10 src10</td>" in page
    assert "<td>99</td>" in page and "<td>0.750</td>" in page
    # Thumbnails are at most `rows` tall; a smaller image is not enlarged.
    sizes = {f: Image.open(index.parent / f).size for f in found}
    assert max(h for _, h in sizes.values()) == 16 and min(h for _, h in sizes.values()) == 12


def test_gallery_without_a_canvas_set_has_no_canvas_columns(tmp_path: Path) -> None:
    writer = GalleryWriter(tmp_path, _classes())
    item = EvalItem(0, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    writer.add(item, {"flat": SetOutput(np.zeros((8, 8, 3), np.uint8))})
    assert writer.columns() == ["layout", "flat", "real photo"]
    assert len(check_page(writer.write())) == 3


def test_thumbnail_keeps_the_aspect_ratio() -> None:
    image = np.zeros((360, 480, 3), np.uint8)
    assert thumbnail(image, 180).shape == (180, 240, 3)
    assert thumbnail(image[:100], 180).shape == (100, 480, 3)
    labels = np.arange(360 * 480).reshape(360, 480) % 7
    assert set(np.unique(thumbnail(labels.astype(np.uint8), 90, nearest=True))) <= set(range(7))


def test_gallery_shows_only_the_chosen_items(tmp_path: Path) -> None:
    writer = GalleryWriter(tmp_path, _classes(), items=[0, 2])
    for i in range(4):
        item = EvalItem(i, f"item{i}", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
        writer.add(item, {"flat": SetOutput(np.zeros((8, 8, 3), np.uint8))})
    page = writer.write().read_text()
    assert "item0" in page and "item2" in page and "item1" not in page and "item3" not in page
    assert len(check_page(tmp_path / "index.html")) == 2 * 3


@pytest.mark.parametrize("gallery", ["docs/eval/gallery", "docs/eval/val-leaky/gallery"])
def test_committed_galleries_link_the_one_stylesheet(gallery: str) -> None:
    """The galleries under docs/eval: every link resolves; their stylesheet is a link to the package's file."""
    index = REPO / gallery / "index.html"
    assert len(check_page(index)) > 0
    css = index.parent / STYLESHEET
    assert css.is_symlink() and css.resolve() == PACKAGE_STYLESHEET.resolve()


def test_writing_again_leaves_a_linked_stylesheet_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared.css"
    shared.write_text(stylesheet())
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / STYLESHEET).symlink_to("../shared.css")
    writer = GalleryWriter(tmp_path / "gallery", _classes())
    writer.add(EvalItem(0, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)), {})
    check_page(writer.write())
    assert (tmp_path / "gallery" / STYLESHEET).is_symlink()
