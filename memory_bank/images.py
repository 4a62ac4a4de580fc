"""Decoding and resizing photos and label maps, with clear errors for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from memory_bank.config import Grid
from memory_bank.errors import LayoutError

# A decompression bomb guard: larger images are refused before decoding.
MAX_PIXELS = 64_000_000


def _open(source: Path | bytes, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
        if img.width * img.height > MAX_PIXELS:
            raise LayoutError(f"{what} is {img.width}x{img.height}, over the {MAX_PIXELS} pixel limit")
        img.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        name = what if isinstance(source, bytes | bytearray) else f"{what} {source}"
        raise LayoutError(f"{name} is not a readable image: {e}") from None
    return img


def image_size(path: Path) -> tuple[int, int]:
    """(rows, cols) of an image file, from its header when the format allows."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LayoutError(f"{path} is not a readable image: {e}") from None


def read_photo(source: Path | bytes) -> np.ndarray:
    """Decode an image file (any PIL format) as an (H, W, 3) uint8 RGB array."""
    return np.asarray(_open(source, "photo").convert("RGB"))


def read_label(source: Path | bytes) -> np.ndarray:
    """Decode a label map as an (H, W) array of ids.

    Accepts single-channel 8- or 16-bit images and palette PNGs (whose indices are the ids).
    RGB images are refused: colour-coded layouts must be mapped to ids first.
    """
    img = _open(source, "label map")
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8) if img.mode == "L" else np.asarray(img).astype(np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.int64)
    raise LayoutError(
        f"label map has mode {img.mode!r} ({len(img.getbands())} channels); expected a single-channel "
        "image of class ids (mode L, P or I;16), not a colour rendering"
    )


def resize_photo(photo: np.ndarray, size: Grid) -> np.ndarray:
    """Resize an (H, W, 3) (or (H, W)) uint8 image to ``size`` = (rows, cols).

    The one photo resize of SIMS: bank photos, training data, network inputs and metric
    references all go through it. OpenCV's pixel-area averaging when shrinking (what the
    networks were trained on; no aliasing) and bilinear interpolation when enlarging.
    """
    rows, cols = int(size[0]), int(size[1])
    if photo.shape[:2] == (rows, cols):
        return photo
    shrink = rows <= photo.shape[0] and cols <= photo.shape[1]
    return cv2.resize(photo, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_longest_side(photo: np.ndarray, longest: int) -> np.ndarray:
    """:func:`resize_photo` to ``longest`` pixels on the longer side, keeping the aspect ratio (thumbnails)."""
    h, w = photo.shape[:2]
    scale = longest / max(h, w)
    return resize_photo(photo, (max(1, round(h * scale)), max(1, round(w * scale))))


def resize_label(label: np.ndarray, size: Grid) -> np.ndarray:
    """Resize an (H, W) label map (or mask, of any dtype) to ``size`` = (rows, cols) by nearest neighbour.

    The one label resize of SIMS. Output pixel ``(i, j)`` takes input pixel
    ``(floor(i * H / rows), floor(j * W / cols))``, computed as OpenCV's ``INTER_NEAREST`` does
    (so it equals ``cv2.resize(label, (cols, rows), interpolation=cv2.INTER_NEAREST)``), here for
    any dtype (cv2 has no int64 or bool).
    """
    rows, cols = int(size[0]), int(size[1])
    if label.shape[:2] == (rows, cols):
        return label
    h, w = label.shape[:2]
    return label[_nearest_source(h, rows)[:, None], _nearest_source(w, cols)[None, :]]


def _nearest_source(n_in: int, n_out: int) -> np.ndarray:
    # OpenCV's arithmetic: the inverse of the double scale n_out / n_in, then floor, clamped.
    inverse = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out) * inverse).astype(np.int64), n_in - 1)
