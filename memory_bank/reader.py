"""Bank: the read side of a published bank version.

Everything here reads only Zarr, Parquet and JSON, so another generator can use a bank
through this module alone, without the retrieval service.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from memory_bank.classes import IGNORE, ClassTable
from memory_bank.config import SegmentConfig
from memory_bank.context_codes import BoxedContexts, offsets_of
from memory_bank.errors import BankFormatError
from memory_bank.manifest import MANIFEST_FILE, Manifest
from memory_bank.segments import segment_context
from memory_bank.storage import BankLocation, locate
from memory_bank.store import file_checksums, resolve_version
from memory_bank.tables import ARRAYS_DIR, IMAGES_FILE, SEGMENTS_FILE, faiss_index_name


@dataclass(frozen=True)
class Segment:
    """One bank segment, read back in full.

    Attributes:
        crop: (h, w, 3) uint8 colour pixels inside ``bbox``, zero outside the mask.
        mask: (H, W) bool footprint in the full frame.
        context: (H, W) uint8 label map inside ``context_box``, IGNORE (255) outside.
        bbox, context_box: ``(y0, x0, y1, x1)``, end exclusive.
    """

    segment_id: int
    image_id: int
    class_id: int
    bbox: tuple[int, int, int, int]
    context_box: tuple[int, int, int, int]
    area: int
    crop: np.ndarray
    mask: np.ndarray
    context: np.ndarray

    @property
    def crop_mask(self) -> np.ndarray:
        """The mask cut to ``bbox``, aligned with ``crop``."""
        y0, x0, y1, x1 = self.bbox
        return self.mask[y0:y1, x0:x1]


class Bank:
    """A published, immutable bank version. Open one with :func:`open_bank`.

    ``location`` says where its files are; ``path`` is its directory (a :class:`Path`) for a local
    bank and its URL (a str, ``s3://...``) for one on object storage.
    """

    def __init__(self, path: Path | BankLocation) -> None:
        self.location = path if isinstance(path, BankLocation) else BankLocation.local(path)
        self.path: Path | str = self.location.local_path or self.location.url
        self.manifest = _load_manifest(self.location)
        try:
            self.segments: pa.Table = self.location.read_table(SEGMENTS_FILE)
            self.images: pa.Table = self.location.read_table(IMAGES_FILE)
            self._group = self.location.open_group(ARRAYS_DIR)
        except (OSError, pa.ArrowInvalid, zarr.errors.GroupNotFoundError) as e:
            raise BankFormatError(f"bank version at {self.path} is unreadable: {e}") from e
        if "instance_id" not in self.segments.column_names:  # banks built before instance-aware segments
            zeros = pa.array(np.zeros(self.segments.num_rows, np.int32))
            self.segments = self.segments.append_column(pa.field("instance_id", pa.int32(), nullable=False), zeros)
        if self.segments.num_rows != self.manifest.counts.segments:
            raise BankFormatError(
                f"segment table has {self.segments.num_rows} rows, manifest says {self.manifest.counts.segments}"
            )

    def __repr__(self) -> str:
        c = self.manifest.counts
        return f"Bank({self.version!r}, images={c.images}, segments={c.segments}, path={str(self.path)!r})"

    # Identity and settings
    @property
    def version(self) -> str:
        return self.manifest.bank_version

    @property
    def classes(self) -> ClassTable:
        return self.manifest.classes

    @property
    def config(self) -> SegmentConfig:
        return self.manifest.segment_config

    @property
    def resolution(self) -> tuple[int, int]:
        return self.manifest.resolution

    @property
    def num_images(self) -> int:
        return self.manifest.counts.images

    @property
    def num_segments(self) -> int:
        return self.manifest.counts.segments

    # Arrays (lazy: nothing is read until indexed)
    @property
    def photos(self) -> zarr.Array:
        """(N, H, W, 3) uint8 photos at working resolution."""
        return self._group["photos"]

    @property
    def labels(self) -> zarr.Array:
        """(N, H, W) uint8 label maps; 255 is unlabelled."""
        return self._group["labels"]

    @property
    def components(self) -> zarr.Array:
        """(N, H, W) uint16; ``local_index + 1`` of the kept segment at each pixel, else 0."""
        return self._group["components"]

    @property
    def format_version(self) -> int:
        """1 (dense contexts) or 2 (boxed contexts); docs/bank-format.md §9."""
        return self.manifest.format_version

    @property
    def codes(self) -> zarr.Group:
        """Group with ``mask`` (S, fine bytes) and ``coarse`` (S, bytes), and the contexts:
        ``context_box`` (S, 4) + ``context_cells`` (format 2) or ``context`` (S, cells) (format 1).
        Read contexts with :meth:`context_rows` or :meth:`context_codes`, which hide the difference."""
        return self._group["codes"]

    def context_codes(self) -> BoxedContexts:
        """Every segment's context code, boxed (as stored in format 2; boxed in chunks from format 1)."""
        grid = self.config.fine_grid
        if self.format_version >= 2:
            return BoxedContexts(
                np.asarray(self._code_array("context_box")[:], np.int16),
                np.asarray(self._code_array("context_cells")[:]),
                grid,
            )
        dense = self._code_array("context")
        step = 65536  # rows read and boxed at once (177 MB at 45x60)
        parts = [
            BoxedContexts.from_rows(np.asarray(dense[i : i + step]), grid) for i in range(0, self.num_segments, step)
        ]
        return BoxedContexts.concat(parts, grid)

    def context_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dense (n, gh * gw) uint8 context codes of segments ``start..stop`` (all by default)."""
        stop = self.num_segments if stop is None else min(stop, self.num_segments)
        if self.format_version < 2:
            return np.asarray(self._code_array("context")[start:stop])
        boxes = np.asarray(self._code_array("context_box")[start:stop], np.int16)
        offsets = self._context_offsets
        cells = np.asarray(self._code_array("context_cells")[int(offsets[start]) : int(offsets[stop])])
        return BoxedContexts(boxes, cells, self.config.fine_grid).rows()

    @cached_property
    def _context_offsets(self) -> np.ndarray:
        return offsets_of(np.asarray(self._code_array("context_box")[:], np.int16))

    def _code_array(self, name: str) -> zarr.Array:
        try:
            return self.codes[name]
        except KeyError:
            raise BankFormatError(
                f"bank version {self.version} (format {self.format_version}) has no codes/{name} array"
            ) from None

    @cached_property
    def _columns(self) -> dict[str, np.ndarray]:
        t = self.segments
        return {
            "image_id": t["image_id"].to_numpy(),
            "class_id": t["class_id"].to_numpy(),
            "local_index": t["local_index"].to_numpy(),
            "area": t["area"].to_numpy(),
            "bbox": _fixed_list(t["bbox"], 4),
            "context_box": _fixed_list(t["context_box"], 4),
        }

    def column(self, name: str) -> np.ndarray:
        """A segment-table column as numpy (``bbox`` and ``context_box`` come as (S, 4))."""
        cols = self._columns
        if name in cols:
            return cols[name]
        return self.segments[name].to_numpy()

    # Segments
    def segment(self, segment_id: int) -> Segment:
        """Read one segment: colour crop, full-frame mask and context, boxes."""
        if not 0 <= segment_id < self.num_segments:
            raise KeyError(f"segment {segment_id} is not in this bank (0..{self.num_segments - 1})")
        c = self._columns
        image_id = int(c["image_id"][segment_id])
        bbox = tuple(int(v) for v in c["bbox"][segment_id])
        cbox = tuple(int(v) for v in c["context_box"][segment_id])
        mask = np.asarray(self.components[image_id]) == c["local_index"][segment_id] + 1
        y0, x0, y1, x1 = bbox
        crop = np.asarray(self.photos[image_id, y0:y1, x0:x1])
        crop = np.where(mask[y0:y1, x0:x1, None], crop, 0).astype(np.uint8)
        context = segment_context(np.asarray(self.labels[image_id]), cbox)
        return Segment(
            segment_id=segment_id,
            image_id=image_id,
            class_id=int(c["class_id"][segment_id]),
            bbox=bbox,  # type: ignore[arg-type]
            context_box=cbox,  # type: ignore[arg-type]
            area=int(c["area"][segment_id]),
            crop=crop,
            mask=mask,
            context=context,
        )

    def segment_ids(self, class_id: int | None = None) -> np.ndarray:
        """Ids of all segments, or of one class, ascending."""
        if class_id is None:
            return np.arange(self.num_segments, dtype=np.int64)
        return np.flatnonzero(self._columns["class_id"] == class_id).astype(np.int64)

    def iter_class(self, class_id: int) -> Iterator[Segment]:
        """Every segment of one class, in id order."""
        for sid in self.segment_ids(class_id):
            yield self.segment(int(sid))

    def class_table(self, class_id: int) -> pa.Table:
        """Rows of the segment table for one class."""
        return self.segments.filter(pc.equal(self.segments["class_id"], class_id))

    def faiss_index_path(self, class_id: int) -> Path | None:
        """Path of a class's FAISS binary index of coarse codes (local banks), or None if it has no segments.

        A bank on object storage has no local path: use :meth:`faiss_index_bytes`.
        """
        if not isinstance(self.path, Path):
            raise ValueError(f"bank {self.path} is not on a local filesystem: read faiss_index_bytes()")
        p = self.path / faiss_index_name(class_id)
        return p if p.is_file() else None

    def faiss_index_bytes(self, class_id: int) -> bytes | None:
        """The serialized FAISS binary index of a class, or None if it has no segments (any bank)."""
        try:
            return self.location.read_bytes(faiss_index_name(class_id))
        except FileNotFoundError:
            return None

    def verify(self) -> list[str]:
        """Compare every file's SHA-256 with the manifest; returns the mismatches (empty if sound)."""
        loc = self.location
        if loc.is_local:
            got = file_checksums(Path(loc.path))
        else:
            got = {rel: loc.sha256(rel) for rel in loc.files() if rel != MANIFEST_FILE}
        want = self.manifest.checksums
        problems = [f"missing: {k}" for k in want if k not in got]
        problems += [f"unexpected: {k}" for k in got if k not in want]
        problems += [f"changed: {k}" for k in want if k in got and got[k] != want[k]]
        return problems


def _fixed_list(col: pa.ChunkedArray, width: int) -> np.ndarray:
    flat = col.combine_chunks().flatten().to_numpy() if col.num_chunks else np.zeros(0)
    return flat.reshape(-1, width)


def _load_manifest(loc: BankLocation) -> Manifest:
    if loc.is_local:
        return Manifest.load(Path(loc.path))
    try:
        data = json.loads(loc.read_bytes(MANIFEST_FILE))
    except FileNotFoundError:
        raise BankFormatError(f"{loc.key(MANIFEST_FILE)} is missing") from None
    except json.JSONDecodeError as e:
        raise BankFormatError(f"{loc.key(MANIFEST_FILE)} is not valid JSON: {e}") from e
    return Manifest.from_dict(data)


def open_bank(
    path: str | Path | BankLocation, version: str | None = None, *, storage_options: Mapping[str, Any] | None = None
) -> Bank:
    """Open the current (or a named) published version of the bank at ``path``.

    ``path`` is a bank root or a version directory: a local path or an fsspec URL
    (``s3://bucket/prefix``), whose filesystem ``storage_options`` configure (see
    :mod:`memory_bank.storage`). Raises :class:`~memory_bank.errors.BankNotFoundError` if nothing
    is published there.
    """
    return Bank(resolve_version(locate(path, storage_options), version))


__all__ = ["IGNORE", "Bank", "Segment", "open_bank"]
