"""An HTML gallery of ``sims eval``: one row per layout, to look at what the numbers measure.

``GalleryWriter(OUT / "gallery", classes)`` is an ``on_item`` callback of
:func:`~synthesis.evaluation.scoring.evaluate_image_sets`: for each item it writes small
thumbnails (at most ``rows`` rows; JPEG for photographs, PNG for label maps) as they come, so no
image set is held in memory; :meth:`GalleryWriter.write` then writes ``index.html``. Columns: the
layout in the class palette, the canvas of the canvas-based set (SIMS), every set's output in the
order given (SIMS, the parametric baseline, the paste row, ...), the canvas's provenance (a colour
per bank segment id, black where none) with the list of segments used, and the real photo.

The page is self-contained: relative links to files beside it (the thumbnails and
``gallery.css``, a copy of the package's stylesheet ``synthesis/evaluation/gallery.css``), no
scripts, fonts or anything else fetched from a network. The galleries committed under
``docs/eval`` keep their ``gallery.css`` as a symbolic link to the package's file, so the page's
style lives once in the repository; :meth:`GalleryWriter.write` leaves such a link alone.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from memory_bank import ClassTable
from memory_bank.images import resize_label, resize_photo
from synthesis.canvas.grid import provenance_colors
from synthesis.evaluation.image_sets import EvalItem, SetOutput

if TYPE_CHECKING:
    from synthesis.canvas.builder import PlacedSegment

#: Thumbnail height in pixels.
THUMBNAIL_ROWS = 180
INDEX = "index.html"
#: The page's stylesheet: a file of this package, copied beside each page.
STYLESHEET = "gallery.css"


@dataclass(frozen=True)
class _Cell:
    """A gallery cell: a thumbnail file (or none) and optional HTML below it."""

    file: str | None = None
    labels: bool = False  # a label map: shown without smoothing
    extra: str = ""


class GalleryWriter:
    """Writes ``directory/index.html`` and its thumbnails, one row per evaluation item.

    Args:
        directory: where the page and thumbnails go (created).
        classes: the class table (palette of the layouts, names in the segment lists).
        canvas_set: the set whose canvas and provenance are shown; by default the first set whose
            output carries a canvas.
        image_names: names of the memory bank's images by image id, to name segments' sources.
        rows: thumbnail height (an image no taller is kept at its own size).
        title: the page's heading.
        items: positions (in evaluation order) of the items to show; by default every item.
    """

    def __init__(
        self,
        directory: str | Path,
        classes: ClassTable,
        *,
        canvas_set: str | None = None,
        image_names: Sequence[str] | None = None,
        rows: int = THUMBNAIL_ROWS,
        title: str = "sims eval gallery",
        items: Sequence[int] | None = None,
    ) -> None:
        if rows < 8:
            raise ValueError(f"thumbnails need at least 8 rows, got {rows}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.classes = classes
        self.canvas_set = canvas_set
        self.image_names = list(image_names) if image_names is not None else None
        self.rows = rows
        self.title = title
        self.palette = classes.palette()
        self.set_names: list[str] | None = None
        self._rows: list[tuple[EvalItem, list[_Cell]]] = []
        self.items = None if items is None else frozenset(int(i) for i in items)
        self._seen = 0

    def __call__(self, item: EvalItem, outputs: Mapping[str, SetOutput]) -> None:
        """Same as :meth:`add`: the writer is an ``on_item`` callback."""
        self.add(item, outputs)

    def add(self, item: EvalItem, outputs: Mapping[str, SetOutput]) -> None:
        """Write the thumbnails of one item (its layout, photo and every set's output), if it is shown."""
        position, self._seen = self._seen, self._seen + 1
        if self.items is not None and position not in self.items:
            return
        if self.set_names is None:
            self.set_names = list(outputs)
            if self.canvas_set is None:
                self.canvas_set = next((n for n, o in outputs.items() if o.canvas is not None), None)
        stem = f"{item.index:04d}_{_slug(item.name)}"
        canvas = outputs[self.canvas_set].canvas if self.canvas_set in outputs else None
        cells = [_Cell(self._save(f"{stem}_layout.png", self.palette[item.layout], labels=True), labels=True)]
        if self.canvas_set is not None:
            cells.append(_Cell(None if canvas is None else self._save(f"{stem}_canvas.jpg", canvas.canvas)))
        for k, name in enumerate(self.set_names):
            got = outputs.get(name)
            cells.append(_Cell(None if got is None else self._save(f"{stem}_set{k}.jpg", got.image)))
        if self.canvas_set is not None:
            if canvas is None:
                cells.append(_Cell())
            else:
                file = self._save(f"{stem}_provenance.png", provenance_colors(canvas.provenance), labels=True)
                cells.append(_Cell(file, labels=True, extra=self._segment_table(canvas.segments)))
        cells.append(_Cell(self._save(f"{stem}_photo.jpg", item.photo)))
        self._rows.append((item, cells))

    def columns(self) -> list[str]:
        """The column headings, after the first :meth:`add`."""
        names = self.set_names or []
        canvas = [f"canvas ({self.canvas_set})"] if self.canvas_set is not None else []
        provenance = ["provenance (a colour per bank segment)"] if self.canvas_set is not None else []
        return ["layout", *canvas, *names, *provenance, "real photo"]

    def write(self) -> Path:
        """Write ``index.html`` for the items added so far; returns its path."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *self.columns()])
        body = []
        for item, cells in self._rows:
            tds = [f'<td><span class="name">{html.escape(item.name)}</span></td>']
            for cell in cells:
                if cell.file is None:
                    tds.append('<td class="none">—</td>')
                    continue
                cls = ' class="labels"' if cell.labels else ""
                tds.append(f'<td><img src="{html.escape(cell.file)}"{cls} alt="" loading="lazy">{cell.extra}</td>')
            body.append("<tr>" + "".join(tds) + "</tr>")
        page = "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>{html.escape(self.title)}</title>",
                f'<link rel="stylesheet" href="{STYLESHEET}">',
                "</head><body>",
                f"<h1>{html.escape(self.title)}</h1>",
                f"<p>{len(self._rows)} layouts. Every image is shown at {self.rows} rows; the metrics were computed "
                "at each set's full output resolution. Provenance: the bank segment behind each kept canvas pixel "
                "(black: missing or elided); its segments are listed back to front with their class, source "
                "image and retrieval score.</p>",
                '<table class="gallery">',
                f"<thead><tr>{head}</tr></thead>",
                "<tbody>",
                *body,
                "</tbody></table>",
                "</body></html>",
                "",
            ]
        )
        _write_stylesheet(self.directory / STYLESHEET)
        path = self.directory / INDEX
        path.write_text(page, encoding="utf-8")
        return path

    def _save(self, file: str, image: np.ndarray, *, labels: bool = False) -> str:
        Image.fromarray(thumbnail(image, self.rows, nearest=labels)).save(
            self.directory / file, **({"optimize": True} if file.endswith(".png") else {"quality": 90})
        )
        return file

    def _segment_table(self, segments: Sequence[PlacedSegment]) -> str:
        if not segments:
            return '<div class="none">no segments</div>'
        names = self.classes.names
        colors = provenance_colors(np.array([[s.segment_id for s in segments]], np.int64))[0]
        rows = []
        for s, rgb in zip(segments, colors, strict=True):
            source = str(s.image_id)
            if self.image_names is not None and 0 <= s.image_id < len(self.image_names):
                source = f"{s.image_id} {Path(self.image_names[s.image_id]).stem}"
            cls = names[s.class_id] if 0 <= s.class_id < len(names) else str(s.class_id)
            color = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))
            rows.append(
                f'<tr><td><span class="swatch" style="background:{color}"></span> {s.segment_id}</td>'
                f"<td>{html.escape(cls)}</td><td>{html.escape(source)}</td><td>{s.score:.3f}</td></tr>"
            )
        head = "<tr><th>segment</th><th>class</th><th>source image</th><th>score</th></tr>"
        # Folded: a layout can use dozens of segments, which would make its row very tall.
        return (
            f"<details><summary>{len(segments)} segments</summary>"
            f'<table class="segments">{head}{"".join(rows)}</table></details>'
        )


def thumbnail(image: np.ndarray, rows: int = THUMBNAIL_ROWS, *, nearest: bool = False) -> np.ndarray:
    """``image`` scaled down to ``rows`` rows (kept as is when not taller), as photos or, with ``nearest``, labels."""
    a = np.ascontiguousarray(image)
    if a.shape[0] <= rows:
        return a
    cols = max(1, round(a.shape[1] * rows / a.shape[0]))
    return resize_label(a, (rows, cols)) if nearest else resize_photo(a, (rows, cols))


def stylesheet() -> str:
    """The gallery page's CSS, as the package holds it."""
    return resources.files("synthesis.evaluation").joinpath(STYLESHEET).read_text(encoding="utf-8")


def _write_stylesheet(path: Path) -> None:
    css = stylesheet()
    # Only when it differs: a committed gallery's copy is a link to the package's file, and
    # writing would go through the link.
    if not (path.is_file() and path.read_text(encoding="utf-8") == css):
        path.write_text(css, encoding="utf-8")


def _slug(name: str) -> str:
    # File names from item names: keep them portable and free of URL-special characters.
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "item"


__all__ = ["STYLESHEET", "THUMBNAIL_ROWS", "GalleryWriter", "stylesheet", "thumbnail"]
