"""Query layouts over HTTP: PNG label maps in, uint8 arrays out, checked before any heavy work.

A layout is a single-channel PNG (8-bit grey or palette; 16-bit grey is accepted when its
values fit) whose pixel values are class ids, 255 = unlabelled. The PNG header is read
first, so a wrong size, an oversized image or a colour image is refused before decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from memory_bank.classes import IGNORE
from memory_bank.segments import check_label_map
from retrieval_service.api.errors import ApiError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_LABEL_COLOR_TYPES = (0, 3)


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that matter for a label map."""

    width: int
    height: int
    bit_depth: int
    color_type: int


def read_png_header(data: bytes) -> PngHeader:
    """Parse the PNG signature and IHDR chunk; raises a 422 :class:`ApiError` if they are not there."""
    if len(data) < 8 or data[:8] != PNG_SIGNATURE:
        raise ApiError(422, "invalid_png", "the layout is not a PNG file (wrong signature)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ApiError(422, "invalid_png", "the layout PNG is truncated or has no IHDR header")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise ApiError(422, "invalid_png", f"the layout PNG is {width}x{height} pixels")
    return PngHeader(width, height, bit_depth, color_type)


def decode_base64(text: str) -> bytes:
    """Decode the standard base64 of a PNG (a ``data:image/png;base64,`` prefix is allowed)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(422, "invalid_base64", f"layout_png is not valid base64: {e}") from None


def decode_layout(
    data: bytes,
    *,
    resolution: tuple[int, int],
    num_classes: int,
    max_pixels: int,
) -> np.ndarray:
    """A PNG label map as an (H, W) uint8 array, validated for the bank it will query.

    Raises :class:`ApiError` (413 for too many pixels, 422 otherwise) or
    :class:`~memory_bank.errors.LayoutError` (422) for class ids outside the bank's table.
    """
    # 1. Header: size limits and colour type before any pixel is decoded.
    header = read_png_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ApiError(
            413,
            "layout_too_large",
            f"the layout is {header.width}x{header.height} = {pixels} pixels, more than the limit of {max_pixels}",
        )
    if header.color_type not in _LABEL_COLOR_TYPES:
        kind = _COLOR_TYPES.get(header.color_type, f"colour type {header.color_type}")
        raise ApiError(
            422,
            "not_a_label_map",
            f"the layout is a {kind} PNG, not a label map: send a single-channel (8-bit greyscale or palette) PNG "
            f"whose pixel values are class ids, {IGNORE} for unlabelled",
        )
    h, w = resolution
    if (header.height, header.width) != (h, w):
        raise ApiError(
            422,
            "wrong_layout_size",
            f"the layout is {header.width}x{header.height} (WxH) but the bank's working resolution is {w}x{h}; "
            "resize it with nearest-neighbour sampling first",
        )
    # 2. Pixels.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                img.load()
                label = np.asarray(img)
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, zlib.error, ...)
        raise ApiError(422, "invalid_png", f"the layout PNG could not be decoded: {e}") from None
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if label.shape != (h, w):
        raise ApiError(422, "invalid_png", f"the layout PNG decoded to shape {label.shape}, expected ({h}, {w})")
    # 3. Values: class ids 0..C-1 and IGNORE only (LayoutError names the offending ids).
    return check_label_map(label, num_classes)


def encode_layout(label: np.ndarray) -> bytes:
    """Encode an (H, W) uint8 label map as a greyscale PNG (what the service expects)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a layout must be an (H, W) uint8 label map, got {label.dtype} {label.shape}")
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return buf.getvalue()


def encode_rgba_png(rgb: np.ndarray, alpha: np.ndarray) -> bytes:
    """An RGBA PNG from an (h, w, 3) uint8 image and an (h, w) bool or uint8 alpha."""
    a = alpha.astype(np.uint8) * 255 if alpha.dtype == bool else alpha.astype(np.uint8)
    rgba = np.concatenate([rgb.astype(np.uint8), a[..., None]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def decode_rgba_png(data: bytes) -> np.ndarray:
    """(h, w, 4) uint8 from an RGBA PNG (the client's view of a segment crop)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"))
