"""PNG codecs of the SIMS services: layouts, segment crops, images and provenance maps.

- A layout is a single-channel PNG (8-bit grey or palette; 16-bit grey is accepted when its
  values fit) whose pixel values are class ids, 255 = unlabelled. :func:`decode_layout_png`
  reads the header first, so a wrong size, an oversized image or a colour image is refused
  before any pixel is decoded, then checks the values with
  :func:`~memory_bank.segments.check_label_map`, the check every layout goes through.
- A segment crop is an RGBA PNG whose alpha is the segment's mask.
- A provenance map (the bank segment behind each canvas pixel) is an RGB PNG holding
  ``segment_id + 1`` in 24 bits (R * 65536 + G * 256 + B); 0 where there is none.

Every decoding failure is a :class:`~memory_bank.errors.LayoutError` whose ``kind`` names it
(``invalid_png``, ``not_a_label_map``, ``wrong_layout_size``, ...), or a
:class:`~memory_bank.errors.LayoutTooLargeError`.
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
from memory_bank.errors import LayoutError, LayoutTooLargeError
from memory_bank.segments import check_label_map, check_layout_size

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_LABEL_COLOR_TYPES = (0, 3)
#: Largest segment id a provenance PNG can hold (24 bits, 0 meaning none).
MAX_PROVENANCE_ID = 2**24 - 2


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that matter for a label map."""

    width: int
    height: int
    bit_depth: int
    color_type: int


def read_png_header(data: bytes) -> PngHeader:
    """Parse the PNG signature and IHDR chunk; a :class:`LayoutError` (``invalid_png``) if they are not there."""
    if len(data) < 8 or data[:8] != PNG_SIGNATURE:
        raise LayoutError("the layout is not a PNG file (wrong signature)", kind="invalid_png")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise LayoutError("the layout PNG is truncated or has no IHDR header", kind="invalid_png")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise LayoutError(f"the layout PNG is {width}x{height} pixels", kind="invalid_png")
    return PngHeader(width, height, bit_depth, color_type)


def png_from_base64(text: str) -> bytes:
    """The PNG bytes of a JSON ``layout_png``: standard base64, a ``data:image/png;base64,`` prefix allowed."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise LayoutError(f"layout_png is not valid base64: {e}", kind="invalid_base64") from None


def decode_layout_png(
    data: bytes,
    *,
    resolution: tuple[int, int],
    num_classes: int,
    max_pixels: int,
) -> np.ndarray:
    """A PNG label map as an (H, W) uint8 array, validated for the bank it will query.

    Raises :class:`LayoutTooLargeError` for more than ``max_pixels`` pixels and
    :class:`LayoutError` otherwise (class ids outside the bank's table among them).
    """
    # 1. Header: size limits and colour type before any pixel is decoded.
    header = read_png_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise LayoutTooLargeError(
            f"the layout is {header.width}x{header.height} = {pixels} pixels, more than the limit of {max_pixels}"
        )
    if header.color_type not in _LABEL_COLOR_TYPES:
        kind = _COLOR_TYPES.get(header.color_type, f"colour type {header.color_type}")
        raise LayoutError(
            f"the layout is a {kind} PNG, not a label map: send a single-channel (8-bit greyscale or palette) PNG "
            f"whose pixel values are class ids, {IGNORE} for unlabelled",
            kind="not_a_label_map",
        )
    check_layout_size((header.height, header.width), resolution)
    # 2. Pixels.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                img.load()
                label = np.asarray(img)
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, zlib.error, ...)
        raise LayoutError(f"the layout PNG could not be decoded: {e}", kind="invalid_png") from None
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if label.shape != tuple(resolution):
        raise LayoutError(
            f"the layout PNG decoded to shape {label.shape}, expected {tuple(resolution)}", kind="invalid_png"
        )
    # 3. Values: class ids 0..C-1 and IGNORE only (the error names the offending ids).
    return check_label_map(label, num_classes)


def encode_layout_png(label: np.ndarray) -> bytes:
    """Encode an (H, W) uint8 label map as a greyscale PNG (what the services expect)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a layout must be an (H, W) uint8 label map, got {label.dtype} {label.shape}")
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return buf.getvalue()


def encode_rgb_png(rgb: np.ndarray, compress_level: int = 6) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes (zlib ``compress_level`` 0..9; 6 is PIL's default)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=compress_level)
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


def encode_provenance_png(provenance: np.ndarray) -> bytes:
    """An (H, W) int map of segment ids (-1 = none) as an RGB PNG holding ``id + 1`` in 24 bits."""
    p = np.asarray(provenance, np.int64)
    if p.ndim != 2 or (p.size and (p.min() < -1 or p.max() > MAX_PROVENANCE_ID)):
        raise ValueError(f"a provenance map is (H, W) ids in -1..{MAX_PROVENANCE_ID}, got {p.shape}")
    v = (p + 1).astype(np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def decode_provenance_png(png: bytes) -> np.ndarray:
    """Inverse of :func:`encode_provenance_png`: (H, W) int64 segment ids, -1 where none."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    return (rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]) - 1
