"""PNG codecs of the SIMS services: layouts, segment crops, images and provenance maps.

- A layout is a single-channel PNG (8-bit grey or palette; 16-bit grey is accepted when its
  values fit) whose pixel values are class ids, 255 = unlabelled. :func:`decode_layout` (and its
  strict shorthand :func:`decode_layout_png`) reads the header first, so a wrong size, an
  oversized image or a colour image is refused before any pixel is decoded, then checks the
  values with :func:`~memory_bank.segments.check_label_map`, the check every layout goes through.
  Three explicit options, off by default, accept more (:class:`LayoutOptions`): ``resize`` (any
  size, nearest-neighbour to the bank's resolution), ``colors`` (an RGB/RGBA/palette rendering in
  the bank's class colours) and ``dataset_ids`` (the source datasets' own unlabelled ids, from the
  manifest). Without them, the error names the option that would accept the layout.
- An instance map, sent with a layout, is a single-channel 8- or 16-bit greyscale PNG of the
  layout's size whose values are object ids (0 = none); :func:`decode_layout` decodes it with the
  layout and resizes it the same way (nearest neighbour).
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

from memory_bank.classes import IGNORE, ClassTable
from memory_bank.errors import LayoutError, LayoutTooLargeError
from memory_bank.images import resize_label
from memory_bank.manifest import Manifest
from memory_bank.segments import check_instance_map, check_label_map, check_layout_size

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_LABEL_COLOR_TYPES = (0, 3)
_RENDERING_COLOR_TYPES = (2, 3, 6)  # what ``colors`` maps: RGB, palette, RGBA
#: Largest segment id a provenance PNG can hold (24 bits, 0 meaning none).
MAX_PROVENANCE_ID = 2**24 - 2


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that matter for a label map."""

    width: int
    height: int
    bit_depth: int
    color_type: int


def read_png_header(data: bytes, what: str = "layout") -> PngHeader:
    """Parse the PNG signature and IHDR chunk; a :class:`LayoutError` (``invalid_png``) if they are not there."""
    if len(data) < 8 or data[:8] != PNG_SIGNATURE:
        raise LayoutError(f"the {what} is not a PNG file (wrong signature)", kind="invalid_png")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise LayoutError(f"the {what} PNG is truncated or has no IHDR header", kind="invalid_png")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise LayoutError(f"the {what} PNG is {width}x{height} pixels", kind="invalid_png")
    return PngHeader(width, height, bit_depth, color_type)


def png_from_base64(text: str, field: str = "layout_png") -> bytes:
    """The PNG bytes of a JSON ``layout_png`` (or ``field``): standard base64, a ``data:`` URL prefix allowed."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise LayoutError(f"{field} is not valid base64: {e}", kind="invalid_base64") from None


@dataclass(frozen=True)
class LayoutSpec:
    """What a bank accepts as a layout: its resolution, class table (ids and colours) and the
    source datasets' own unlabelled ids (raw id -> dataset name, from the manifest's sources)."""

    resolution: tuple[int, int]
    classes: ClassTable
    dataset_ids: dict[int, str]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> LayoutSpec:
        ids = {int(i): s.dataset for s in manifest.sources for i in s.unlabelled_ids}
        return cls(tuple(manifest.resolution), manifest.classes, ids)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayoutOptions:
    """How liberally :func:`decode_layout` reads a layout (all off: strict, the default everywhere).

    Attributes:
        resize: a layout of another size is resized to the bank's resolution (nearest neighbour).
        colors: an RGB, RGBA or palette PNG in the bank's class colours is mapped to class ids;
            black and fully transparent pixels are unlabelled unless a class has that colour.
        dataset_ids: the source datasets' unlabelled ids (e.g. CamVid's 11) become 255.
    """

    resize: bool = False
    colors: bool = False
    dataset_ids: bool = False


@dataclass(frozen=True)
class DecodedLayout:
    """A decoded layout: ``label`` (H, W) uint8 at the bank's resolution, ``size``, the (H, W) it was
    sent at, and ``instances``, its (H, W) int32 instance map at the bank's resolution if one came."""

    label: np.ndarray
    size: tuple[int, int]
    instances: np.ndarray | None = None

    @property
    def resized(self) -> bool:
        return self.label.shape != self.size


def decode_layout(
    data: bytes,
    spec: LayoutSpec,
    *,
    max_pixels: int,
    options: LayoutOptions = LayoutOptions(),
    instances: bytes | None = None,
) -> DecodedLayout:
    """A PNG layout as class ids at the bank's resolution, validated for ``spec``'s bank.

    The one layout decoder of the services and ``sims synthesize``. Raises
    :class:`LayoutTooLargeError` for more than ``max_pixels`` pixels and :class:`LayoutError`
    otherwise; without the option that would accept the layout, the message names it.
    ``instances`` is the PNG of the layout's instance map, if any (:func:`decode_instances`).
    """
    # 1. Header: size limits, colour type and size before any pixel is decoded.
    header = read_png_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise LayoutTooLargeError(
            f"the layout is {header.width}x{header.height} = {pixels} pixels, more than the limit of {max_pixels}"
        )
    rendering = options.colors and header.color_type in _RENDERING_COLOR_TYPES
    if header.color_type not in _LABEL_COLOR_TYPES and not rendering:
        kind = _COLOR_TYPES.get(header.color_type, f"colour type {header.color_type}")
        hint = "; pass layout_colors=true to map the bank's class colours" if header.color_type in (2, 6) else ""
        raise LayoutError(
            f"the layout is a {kind} PNG, not a label map: send a single-channel (8-bit greyscale or palette) PNG "
            f"whose pixel values are class ids, {IGNORE} for unlabelled{hint}",
            kind="not_a_label_map",
        )
    size = (header.height, header.width)
    if not options.resize:
        check_layout_size(size, spec.resolution, hint="pass layout_resize=true to resize it (nearest neighbour)")
    # 2. Pixels.
    raw = _decode_pixels(data, "layout", rgba=rendering)
    if raw.shape[:2] != size:
        raise LayoutError(f"the layout PNG decoded to shape {raw.shape}, expected {size}", kind="invalid_png")
    label = _map_colors(raw, spec.classes) if rendering else (raw.astype(np.uint8) if raw.dtype == bool else raw)
    # 3. Values: the datasets' unlabelled ids on request, then class ids 0..C-1 and IGNORE only.
    if options.dataset_ids and spec.dataset_ids:
        label = np.where(np.isin(label, list(spec.dataset_ids)), IGNORE, label)
    try:
        label = check_label_map(label, len(spec.classes))
    except LayoutError as e:
        raise LayoutError(f"{e}{_dataset_hint(label, spec, options)}", kind=e.kind) from None
    # 4. The bank's resolution.
    inst = None if instances is None else resize_label(decode_instances(instances, size), spec.resolution)
    return DecodedLayout(np.ascontiguousarray(resize_label(label, spec.resolution)), size, inst)


def decode_instances(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """An instance map PNG (single-channel 8- or 16-bit greyscale, (H, W) = ``size``, the layout's) as int32 ids.

    0 means no instance. Its size is checked from the header, before any pixel is decoded.
    """
    header = read_png_header(data, "instance map")
    if header.color_type != 0 or header.bit_depth not in (8, 16):
        kind = _COLOR_TYPES.get(header.color_type, f"colour type {header.color_type}")
        raise LayoutError(
            f"the instance map is a {header.bit_depth}-bit {kind} PNG; send a single-channel 8- or 16-bit "
            "greyscale PNG of instance ids (0 = none)",
            kind="not_an_instance_map",
        )
    if (header.height, header.width) != tuple(size):
        raise LayoutError(
            f"the instance map is {header.width}x{header.height} (WxH) but its layout is {size[1]}x{size[0]}; "
            "send it at the layout's size",
            kind="wrong_instance_size",
        )
    raw = _decode_pixels(data, "instance map")
    if raw.shape != tuple(size):
        raise LayoutError(f"the instance map PNG decoded to shape {raw.shape}, expected {size}", kind="invalid_png")
    return check_instance_map(raw, size)


def _decode_pixels(data: bytes, what: str, *, rgba: bool = False) -> np.ndarray:
    """The pixels of a PNG whose header was checked, as PIL decodes them (converted to RGBA if
    ``rgba``); a decompression bomb or corrupt data is a :class:`LayoutError` (``invalid_png``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                img.load()
                return np.asarray(img.convert("RGBA")) if rgba else np.asarray(img)
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, zlib.error, ...)
        raise LayoutError(f"the {what} PNG could not be decoded: {e}", kind="invalid_png") from None


def _png_bytes(pixels: np.ndarray, **save: int) -> bytes:
    """An array as PNG bytes, in the mode PIL infers from its dtype and shape (``save``: PIL's PNG options)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", **save)
    return buf.getvalue()


def _grey16_png(values: np.ndarray, error: str) -> bytes:
    """An (H, W) map of values in 0..65535 as a 16-bit greyscale PNG; else a ValueError, ``error``
    formatted with the map's ``dtype`` and ``shape``."""
    m = np.asarray(values)
    if m.ndim != 2 or (m.size and (m.min() < 0 or m.max() > 65_535)):
        raise ValueError(error.format(dtype=m.dtype, shape=m.shape))
    return _png_bytes(m.astype(np.uint16))


def encode_instances_png(instances: np.ndarray) -> bytes:
    """An (H, W) map of instance ids in 0..65535 as a 16-bit greyscale PNG (what the services take)."""
    return _grey16_png(instances, "an instance map to encode is (H, W) ids in 0..65535, got {dtype} {shape}")


def decode_layout_png(
    data: bytes,
    *,
    resolution: tuple[int, int],
    num_classes: int,
    max_pixels: int,
) -> np.ndarray:
    """A strict PNG label map as an (H, W) uint8 array at ``resolution`` (:func:`decode_layout`, no options)."""
    spec = LayoutSpec(tuple(resolution), ClassTable.from_names([str(i) for i in range(num_classes)]), {})  # type: ignore[arg-type]
    return decode_layout(data, spec, max_pixels=max_pixels).label


def _map_colors(rgba: np.ndarray, classes: ClassTable) -> np.ndarray:
    """(H, W) class ids of an (H, W, 4) rendering in the class colours; an unknown colour is a :class:`LayoutError`."""
    key = (rgba[..., 0].astype(np.int64) << 16) | (rgba[..., 1].astype(np.int64) << 8) | rgba[..., 2]
    key = np.where(rgba[..., 3] == 0, -1, key)  # fully transparent: unlabelled
    table = {(c.color[0] << 16) | (c.color[1] << 8) | c.color[2]: c.id for c in classes}
    table.setdefault(0, IGNORE)  # black: unlabelled, unless a class is black
    table.setdefault(-1, IGNORE)
    colors, inverse, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    ids = np.array([table.get(int(c), -2) for c in colors], np.int64)
    if (ids == -2).any():
        bad = np.flatnonzero(ids == -2)
        worst = bad[np.argmax(counts[bad])]
        v = int(colors[worst])
        more = f" and {bad.size - 1} other colours" if bad.size > 1 else ""
        raise LayoutError(
            f"layout colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) ({int(counts[worst])} pixels){more} is not a "
            "class colour of the bank (GET /bank lists them); black and transparent pixels are unlabelled",
            kind="unknown_color",
        )
    return ids[inverse].reshape(key.shape).astype(np.uint8)


def _dataset_hint(label: np.ndarray, spec: LayoutSpec, options: LayoutOptions) -> str:
    """``; 11 is camvid's unlabelled id: pass dataset_ids=true`` when that would help."""
    if not spec.dataset_ids:
        # Banks built before the manifest recorded the datasets' unlabelled ids cannot map them.
        return "; if they are the dataset's own unlabelled ids, this bank does not record them: rebuild it"
    if options.dataset_ids:
        return ""
    present = [i for i in spec.dataset_ids if np.any(label == i)]
    if not present:
        return ""
    named = ", ".join(f"{i} is {spec.dataset_ids[i]}'s unlabelled id" for i in present[:4])
    return f"; {named}: pass dataset_ids=true"


def encode_layout_png(label: np.ndarray) -> bytes:
    """Encode an (H, W) uint8 label map as a greyscale PNG (what the services expect)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a layout must be an (H, W) uint8 label map, got {label.dtype} {label.shape}")
    return _png_bytes(label)


def encode_rgb_png(rgb: np.ndarray, compress_level: int = 6) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes (zlib ``compress_level`` 0..9; 6 is PIL's default)."""
    return _png_bytes(np.ascontiguousarray(rgb, np.uint8), compress_level=compress_level)


def encode_rgba_png(rgb: np.ndarray, alpha: np.ndarray) -> bytes:
    """An RGBA PNG from an (h, w, 3) uint8 image and an (h, w) bool or uint8 alpha."""
    a = alpha.astype(np.uint8) * 255 if alpha.dtype == bool else alpha.astype(np.uint8)
    return _png_bytes(np.concatenate([rgb.astype(np.uint8), a[..., None]], axis=2))


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
    return _png_bytes(np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8))


def decode_provenance_png(png: bytes) -> np.ndarray:
    """Inverse of :func:`encode_provenance_png`: (H, W) int64 segment ids, -1 where none."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    return (rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]) - 1


def encode_components_png(component_map: np.ndarray) -> bytes:
    """An (H, W) map of component index + 1 (0 = none) as a 16-bit greyscale PNG."""
    return _grey16_png(component_map, "a component map is (H, W) values in 0..65535, got {shape}")


def decode_components_png(png: bytes) -> np.ndarray:
    """Inverse of :func:`encode_components_png`: (H, W) int64, component index + 1, 0 where none."""
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img).astype(np.int64)
