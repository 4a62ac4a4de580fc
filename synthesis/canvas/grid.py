"""PNG grids for looking at canvases: one row per layout, columns layout | simulated | test-time | photo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from memory_bank import Bank, ClassTable
from memory_bank.images import resize_label, resize_photo
from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
from synthesis.canvas.simulate import ColorDonors, simulate_canvas

COLUMNS = ("layout", "simulated canvas", "test-time canvas", "photo")
_HEADER = 22  # pixels
_GAP = 2  # white pixels between tiles


@dataclass(frozen=True)
class GridRow:
    """One row of a grid, all at one (H, W): a label map and three RGB images."""

    layout: np.ndarray  # (H, W) uint8
    simulated: np.ndarray  # (H, W, 3) uint8
    test_time: np.ndarray  # (H, W, 3) uint8
    photo: np.ndarray  # (H, W, 3) uint8


def render_grid(rows: Sequence[GridRow], classes: ClassTable, scale: float = 0.5, header: bool = True) -> np.ndarray:
    """One (rows*h [+ header], 4*w, 3) uint8 image; layouts in the class table's colours (unlabelled black).

    Tiles are scaled by ``scale`` (nearest for the layout, area for images) and separated by
    2-pixel white lines.
    """
    if not rows:
        raise ValueError("a grid needs at least one row")
    h, w = rows[0].layout.shape
    th, tw = _tile_size((h, w), scale)
    palette = classes.palette()
    lines = []
    for r in rows:
        if r.layout.shape != (h, w) or any(a.shape != (h, w, 3) for a in (r.simulated, r.test_time, r.photo)):
            raise ValueError("every tile of a grid must have the same (H, W)")
        tiles = [palette[resize_label(r.layout, (th, tw))]]
        tiles += [resize_photo(a, (th, tw)) for a in (r.simulated, r.test_time, r.photo)]
        lines.append(_hstack(tiles))
    return _assemble(lines, COLUMNS, tw, header)


def render_table(
    rows: Sequence[Sequence[np.ndarray]], columns: Sequence[str], scale: float = 0.5, header: bool = True
) -> np.ndarray:
    """A grid of RGB tiles: one row per item, one named column per tile (all tiles one (H, W, 3) uint8).

    Like :func:`render_grid` (scaled by area averaging, 2-pixel white lines, a header of column names),
    for any columns; colour label maps first (``classes.palette()[layout]``).
    """
    if not rows:
        raise ValueError("a grid needs at least one row")
    h, w = rows[0][0].shape[:2]
    th, tw = _tile_size((h, w), scale)
    lines = []
    for row in rows:
        if len(row) != len(columns) or any(t.shape != (h, w, 3) or t.dtype != np.uint8 for t in row):
            raise ValueError(f"every row needs {len(columns)} (H, W, 3) uint8 tiles of one size")
        lines.append(_hstack([resize_photo(t, (th, tw)) for t in row]))
    return _assemble(lines, columns, tw, header)


def provenance_colors(provenance: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: one colour per bank segment id (a hash of it), black where the id is -1."""
    ids = np.asarray(provenance, np.int64)
    # Knuth's multiplicative hash spreads neighbouring ids over the colour cube.
    h = (np.maximum(ids, 0).astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    rgb = np.stack([h >> np.uint64(16), (h >> np.uint64(8)) & np.uint64(255), h & np.uint64(255)], -1)
    rgb = (rgb // 2 + 80).astype(np.uint8)  # mid tones: never black, never white
    rgb[ids < 0] = 0
    return rgb


def _tile_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) of a tile of an (H, W) image scaled by ``scale``."""
    if not 0 < scale <= 4:
        raise ValueError(f"scale must be in (0, 4], got {scale}")
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _assemble(lines: list[np.ndarray], columns: Sequence[str], tile_width: int, header: bool) -> np.ndarray:
    """The rows of tiles one under another, under a header naming the ``columns`` unless ``header`` is False."""
    body = _vstack(lines)
    if not header:
        return body
    top = np.full((_HEADER, body.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(columns):
        x = i * (tile_width + _GAP) + 4
        cv2.putText(top, name, (x, _HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([top, body], axis=0)


def _hstack(tiles: list[np.ndarray]) -> np.ndarray:
    sep = np.full((tiles[0].shape[0], _GAP, 3), 255, np.uint8)
    parts = [p for t in tiles for p in (t, sep)][:-1]
    return np.concatenate(parts, axis=1)


def _vstack(lines: list[np.ndarray]) -> np.ndarray:
    sep = np.full((_GAP, lines[0].shape[1], 3), 255, np.uint8)
    parts = [p for t in lines for p in (t, sep)][:-1]
    return np.concatenate(parts, axis=0)


def save_image(path: str | Path, image: np.ndarray, colors: int | None = None) -> Path:
    """Write an RGB uint8 image as an optimised PNG, or a JPEG (quality 90) for a .jpg/.jpeg path.

    Creates the parent directory. ``colors`` (2..256) quantises a PNG to a palette first, for
    small files (e.g. in the docs); photographs keep their detail better as JPEG.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=90, optimize=True)
        return path
    if colors is not None:
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be in 2..256, got {colors}")
        img = img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(path, optimize=True)
    return path


def grid_rows(
    bank: Bank,
    pairs: Bank,
    image_ids: Sequence[int],
    *,
    seed: int = 0,
    options: CanvasOptions | None = None,
    color_transfer: float = 0.2,
    donors: ColorDonors | None = None,
) -> list[GridRow]:
    """Rows for layouts and photos taken from ``pairs`` (a bank), canvases built from ``bank``.

    When ``pairs`` is ``bank`` itself, each image is excluded from its own retrievals (for both
    canvases), as in training. ``donors`` (colour statistics of ``bank``) are computed if needed.
    """
    if tuple(pairs.resolution) != tuple(bank.resolution):
        raise ValueError(f"pairs are {pairs.resolution} but the bank works at {bank.resolution}")
    if pairs.classes != bank.classes:
        raise ValueError("the pairs' bank and the retrieval bank have different class tables")
    builder = CanvasBuilder.from_bank(bank, options=options)
    if donors is None and color_transfer > 0:
        donors = ColorDonors.from_bank(builder.segments)  # type: ignore[arg-type]
    same = pairs.path == bank.path
    rows = []
    for i in image_ids:
        if not 0 <= i < pairs.num_images:
            raise ValueError(f"image {i} is not in {pairs.path} (0..{pairs.num_images - 1})")
        layout, photo = np.asarray(pairs.labels[i]), np.asarray(pairs.photos[i])
        own = int(i) if same else None
        sim = simulate_canvas(
            builder, layout, photo, seed=seed, image_id=own, donors=donors, color_transfer=color_transfer
        )
        test = builder(layout, seed=seed, exclude_images=() if own is None else (own,))
        rows.append(GridRow(layout, sim.canvas, test.canvas, photo))
    return rows
