"""Decoding and resizing photos and label maps, with clear errors for bad files."""

from __future__ import annotations

import io
from pathlib import Path

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
    """Resize an (H, W, 3) uint8 photo to ``size`` = (rows, cols) with area-style filtering."""
    if photo.shape[:2] == tuple(size):
        return photo
    img = Image.fromarray(photo).resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img)


def resize_label(label: np.ndarray, size: Grid) -> np.ndarray:
    """Resize an (H, W) label map to ``size`` = (rows, cols) by nearest neighbour."""
    if label.shape == tuple(size):
        return label
    h, w = label.shape
    rows = (np.arange(size[0]) * h + h // 2) // size[0]
    cols = (np.arange(size[1]) * w + w // 2) // size[1]
    return label[rows[:, None], cols[None, :]]
