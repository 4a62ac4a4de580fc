"""BankWriter: stage a new bank version, then publish it atomically."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from memory_bank.classes import ClassTable
from memory_bank.codes import coarse_bits, code_bytes, fine_bits, popcount
from memory_bank.config import Grid, SegmentConfig
from memory_bank.context_codes import BoxedContexts
from memory_bank.errors import BankFormatError
from memory_bank.manifest import Counts, Manifest, SourceInfo
from memory_bank.reader import Bank
from memory_bank.records import ImageRecord
from memory_bank.storage import BankLocation, locate
from memory_bank.store import RemoteStaging, file_checksums, open_staging, sync_and_hash
from memory_bank.tables import (
    ARRAYS_DIR,
    IMAGE_SCHEMA,
    IMAGES_FILE,
    SEGMENT_SCHEMA,
    SEGMENTS_FILE,
)

log = logging.getLogger(__name__)

#: Rows per chunk of the code arrays.
CODE_CHUNK_ROWS = 4096
#: Cells per chunk of ``codes/context_cells`` (4 MiB before compression).
CONTEXT_CELL_CHUNK = 4 * 1024 * 1024
IMAGE_ARRAYS = ("photos", "labels", "components")


class BankWriter:
    """Writes one new version of a bank into a locked staging directory.

    Use as a context manager: an exception inside the block removes the staged files, and
    nothing is visible to readers until :meth:`publish`. With ``base`` (an open bank), the new
    version starts as a copy of it (photo chunks are hard-linked, not copied) and images are
    appended after its last one.

        with BankWriter(root, classes=..., resolution=(360, 480), config=cfg, capacity=n) as w:
            for record in records:
                w.add(record)
            w.finish(sources)
            # optional: write more files under w.path (FAISS indexes) here
            version = w.publish()
    """

    def __init__(
        self,
        root: Path | str | BankLocation,
        *,
        classes: ClassTable,
        resolution: Grid,
        config: SegmentConfig,
        capacity: int,
        base: Bank | None = None,
    ) -> None:
        location = locate(root)  # a local directory or an fsspec URL (staged locally, uploaded on publish)
        self.root = location.local_path or location.url
        self.classes, self.resolution, self.config = classes, tuple(resolution), config
        self.base = base
        if base is not None:
            m = base.manifest
            if (m.classes, m.resolution, m.segment_config) != (
                classes,
                self.resolution,
                config,
            ):
                raise BankFormatError(
                    "cannot append: the classes, resolution or segment settings differ from the bank's"
                )
        self.staging = open_staging(location)
        self.path = self.staging.path
        self._n_images = base.num_images if base else 0
        self._n_segments = base.num_segments if base else 0
        self._capacity = self._n_images + capacity
        self._new_images: list[tuple[int, int, ImageRecord]] = []
        self._known_checksums: dict[str, str] = {}
        self._copied_checksums: dict[str, str] = {}  # parent files copied server-side, not staged here
        self._code_buffers: dict[str, list[np.ndarray]] = {
            "mask": [],
            "context": [],
            "coarse": [],
        }
        self._buffered = 0
        self._codes_written = 0
        self._dropped = (base.manifest.counts.dropped_segments, base.manifest.counts.dropped_area) if base else (0, 0)
        self._published: str | None = None
        self._finished: Manifest | None = None
        self._create_arrays()

    # 1. Layout of the staged arrays
    def _create_arrays(self) -> None:
        h, w = self.resolution
        group = zarr.open_group(self.path / ARRAYS_DIR, mode="w", zarr_format=3)
        group.attrs.update({"sims": "bank arrays, see docs/bank-format.md"})
        specs = {
            "photos": ((self._capacity, h, w, 3), (1, h, w, 3), "uint8"),
            "labels": ((self._capacity, h, w), (1, h, w), "uint8"),
            "components": ((self._capacity, h, w), (1, h, w), "uint16"),
        }
        # zstd level 1: a third faster than the default level on photos for 2% more bytes.
        self._arrays = {
            name: group.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=0,
                compressors=ZstdCodec(level=1),
            )
            for name, (shape, chunks, dtype) in specs.items()
        }
        codes = group.require_group("codes")
        row_codes = {
            "mask": (code_bytes(fine_bits(self.config)), "uint8"),
            "coarse": (code_bytes(coarse_bits(self.config)), "uint8"),
            "context_box": (4, "int16"),
        }
        self._codes = {
            name: codes.create_array(name, shape=(0, width), chunks=(CODE_CHUNK_ROWS, width), dtype=dtype, fill_value=0)
            for name, (width, dtype) in row_codes.items()
        }
        # Format 2: each context's cells inside its grid box, concatenated (memory_bank/context_codes.py).
        self._cells = codes.create_array(
            "context_cells", shape=(0,), chunks=(CONTEXT_CELL_CHUNK,), dtype="uint8", fill_value=0
        )
        self._cell_buffer: list[np.ndarray] = []
        self._cells_buffered = 0
        self._cells_written = 0
        if self.base is not None:
            self._copy_base()

    def _copy_base(self) -> None:
        assert self.base is not None
        if self.base.location.is_local:
            src = self.base.path / ARRAYS_DIR
            for name in IMAGE_ARRAYS:
                # Per-image chunks of an immutable version never change: link instead of copying.
                _link_tree(src / name / "c", self.path / ARRAYS_DIR / name / "c")
        else:
            self._copy_remote_base(self.base.location)
        codes = self.base.codes
        for start in range(0, self.base.num_segments, CODE_CHUNK_ROWS):
            stop = min(start + CODE_CHUNK_ROWS, self.base.num_segments)
            rows = {k: np.asarray(codes[k][start:stop]) for k in ("mask", "coarse")}
            self._buffer_codes({**rows, "context": self.base.context_rows(start, stop)})
        # Linked chunks hold the same bytes as in the base version: reuse their checksums.
        prefixes = tuple(f"{ARRAYS_DIR}/{name}/c/" for name in IMAGE_ARRAYS)
        self._known_checksums.update({k: v for k, v in self.base.manifest.checksums.items() if k.startswith(prefixes)})

    def _copy_remote_base(self, src: BankLocation) -> None:
        """A parent on object storage: its chunks are copied server-side at publication (or downloaded)."""
        prefixes = tuple(f"{ARRAYS_DIR}/{name}/c/" for name in IMAGE_ARRAYS)
        chunks = [k for k in self.base.manifest.checksums if k.startswith(prefixes)]
        same_store = isinstance(self.staging, RemoteStaging) and type(self.staging.root.fs) is type(src.fs)
        if same_store:
            self.staging.parent_copies.update(dict.fromkeys(chunks, src))
            self._copied_checksums.update({k: self.base.manifest.checksums[k] for k in chunks})
        elif chunks:
            for k in chunks:
                (self.path / k).parent.mkdir(parents=True, exist_ok=True)
            src.fs.get([src.key(k) for k in chunks], [str(self.path / k) for k in chunks])

    # 2. Appending images
    @property
    def arrays_path(self) -> Path:
        """The staged Zarr group; parallel workers may write image chunks here themselves."""
        return self.path / ARRAYS_DIR

    @property
    def next_image_id(self) -> int:
        return self._n_images

    def add(self, record: ImageRecord, checksums: dict[str, str] | None = None) -> int:
        """Append one image with its segments; returns its image id.

        A record whose ``photo`` is None had its pixels written already by
        :func:`write_pixels` (in a worker) at exactly this image id; pass the ``checksums``
        that call returned so publishing need not read those files again.
        """
        if record.segments.frame != self.resolution:
            raise ValueError(f"record is {record.segments.frame}, the bank's resolution is {self.resolution}")
        image_id = self._n_images
        if image_id >= self._capacity:
            self._grow(max(16, self._capacity // 2))
        if record.photo is not None:
            checksums = write_pixels(self.arrays_path, image_id, record, arrays=self._arrays)
        self._known_checksums.update(checksums or {})
        seg, codes = record.segments, record.codes
        self._new_images.append((image_id, self._n_segments, record))
        self._dropped = (
            self._dropped[0] + seg.dropped,
            self._dropped[1] + seg.dropped_area,
        )
        self._buffer_codes({"mask": codes.mask, "context": codes.context, "coarse": codes.coarse})
        self._n_images += 1
        self._n_segments += len(seg)
        return image_id

    def _new_tables(self) -> tuple[pa.Table, pa.Table]:
        """The segment and image rows of the images added to this version."""
        parts = self._new_images
        if not parts:
            return SEGMENT_SCHEMA.empty_table(), IMAGE_SCHEMA.empty_table()
        counts = np.array([len(r.segments) for _, _, r in parts])
        cat = lambda get, dtype=None: np.concatenate([get(r) for _, _, r in parts]).astype(dtype, copy=False)  # noqa: E731
        first = parts[0][1]
        fixed = lambda arr, width: pa.FixedSizeListArray.from_arrays(pa.array(arr.ravel()), width)  # noqa: E731
        segments = pa.Table.from_arrays(
            [
                pa.array(np.arange(first, first + counts.sum(), dtype=np.int64)),
                pa.array(np.repeat([i for i, _, _ in parts], counts).astype(np.int32)),
                pa.array(cat(lambda r: r.segments.class_id, np.int16)),
                pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in counts])),
                fixed(cat(lambda r: r.segments.bbox, np.int32), 4),
                fixed(cat(lambda r: r.segments.context_box, np.int32), 4),
                pa.array(cat(lambda r: r.segments.area, np.int32)),
                fixed(cat(lambda r: r.segments.centroid, np.float32), 2),
                pa.array(cat(lambda r: r.codes.mask_popcount, np.int32)),
                pa.array(cat(lambda r: r.codes.context_popcount, np.int32)),
                pa.array(cat(lambda r: popcount(r.codes.coarse), np.int32)),
                pa.DictionaryArray.from_arrays(
                    pa.array(np.repeat(np.arange(len(parts), dtype=np.int32), counts)),
                    pa.array([r.source_file for _, _, r in parts]),
                ).cast(pa.string()),
                pa.array(
                    np.repeat([r.split for _, _, r in parts], counts).astype(str),
                    pa.string(),
                ),
                pa.array(cat(lambda r: r.segments.instance_id, np.int32)),
            ],
            schema=SEGMENT_SCHEMA,
        )
        images = pa.Table.from_pylist(
            [
                {
                    "image_id": image_id,
                    "dataset": r.dataset,
                    "split": r.split,
                    "source_file": r.source_file,
                    "label_file": r.label_file,
                    "source_height": r.source_size[0],
                    "source_width": r.source_size[1],
                    "num_segments": len(r.segments),
                    "dropped_segments": r.segments.dropped,
                    "dropped_area": r.segments.dropped_area,
                }
                for image_id, _, r in parts
            ],
            schema=IMAGE_SCHEMA,
        )
        return segments, images

    def _grow(self, extra: int) -> None:
        self._capacity += extra
        for arr in self._arrays.values():
            arr.resize((self._capacity, *arr.shape[1:]))

    def _buffer_codes(self, rows: dict[str, np.ndarray]) -> None:
        for k, v in rows.items():
            self._code_buffers[k].append(v)
        self._buffered += len(rows["mask"])
        if self._buffered >= CODE_CHUNK_ROWS:
            self._flush_codes(final=False)

    def _flush_codes(self, *, final: bool) -> None:
        if self._buffered == 0:
            self._flush_cells(final=final)
            return
        merged = {k: np.concatenate(v) for k, v in self._code_buffers.items()}
        # Write whole chunks only, so no chunk is ever written twice.
        n = self._buffered if final else (self._buffered // CODE_CHUNK_ROWS) * CODE_CHUNK_ROWS
        start = self._codes_written
        boxed = BoxedContexts.from_rows(merged["context"][:n], self.config.fine_grid)
        rows = {"mask": merged["mask"][:n], "coarse": merged["coarse"][:n], "context_box": boxed.boxes}
        for k, arr in self._codes.items():
            arr.resize((start + n, arr.shape[1]))
            arr[start : start + n] = rows[k]
        for k in self._code_buffers:
            self._code_buffers[k] = [merged[k][n:]]
        self._codes_written += n
        self._buffered -= n
        self._cell_buffer.append(boxed.data)
        self._cells_buffered += boxed.data.size
        self._flush_cells(final=final)

    def _flush_cells(self, *, final: bool) -> None:
        """Append the buffered context cells to ``codes/context_cells``, in whole chunks until the last."""
        n = self._cells_buffered if final else (self._cells_buffered // CONTEXT_CELL_CHUNK) * CONTEXT_CELL_CHUNK
        if n == 0:
            return
        merged = np.concatenate(self._cell_buffer)
        start = self._cells_written
        self._cells.resize((start + n,))
        self._cells[start : start + n] = merged[:n]
        self._cell_buffer = [merged[n:]]
        self._cells_written += n
        self._cells_buffered -= n

    # 3. Tables, manifest and publication
    def finish(self, sources: Sequence[SourceInfo]) -> Manifest:
        """Write the remaining codes, the Parquet tables and a manifest (without checksums)."""
        self._flush_codes(final=True)
        if self._capacity != self._n_images:
            self._capacity = self._n_images
            for arr in self._arrays.values():
                arr.resize((self._n_images, *arr.shape[1:]))
        segments, images = self._new_tables()
        if self.base is not None:
            segments = pa.concat_tables([self.base.segments.cast(SEGMENT_SCHEMA), segments])
            images = pa.concat_tables([self.base.images.cast(IMAGE_SCHEMA), images])
        pq.write_table(segments, self.path / SEGMENTS_FILE, compression="zstd")
        pq.write_table(images, self.path / IMAGES_FILE, compression="zstd")
        per_class = np.bincount(
            segments["class_id"].to_numpy().astype(np.int64),
            minlength=len(self.classes),
        )
        base_sources = self.base.manifest.sources if self.base else ()
        self._finished = Manifest(
            bank_version=self.staging.version,
            parent_version=self.base.version if self.base else None,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            classes=self.classes,
            resolution=self.resolution,  # type: ignore[arg-type]
            segment_config=self.config,
            counts=Counts(
                images=self._n_images,
                segments=self._n_segments,
                dropped_segments=self._dropped[0],
                dropped_area=self._dropped[1],
                segments_per_class=tuple(int(v) for v in per_class),
            ),
            sources=(*base_sources, *sources),
        )
        return self._finished

    def publish(self) -> Manifest:
        """Checksum every staged file, write the manifest and make this the current version."""
        if self._finished is None:
            raise RuntimeError("call finish() before publish()")
        checksums = {**file_checksums(self.path, known=self._known_checksums), **self._copied_checksums}
        manifest = Manifest(**{**self._finished.__dict__, "checksums": checksums})
        manifest.save(self.path)
        self.staging.publish(already_synced=set(self._known_checksums))
        self._published = manifest.bank_version
        log.info(
            "published %s: %d images, %d segments (%d dropped below %d px)",
            manifest.bank_version,
            manifest.counts.images,
            manifest.counts.segments,
            manifest.counts.dropped_segments,
            self.config.min_area,
        )
        return manifest

    def abort(self) -> None:
        """Discard everything staged."""
        if self._published is None:
            self.staging.abort()

    def __enter__(self) -> BankWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._published is None:
            self.abort()


def _link_tree(src: Path, dst: Path) -> None:
    if not src.exists():
        return
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(dirpath) / name, dst / rel / name)
            except OSError:
                shutil.copy2(Path(dirpath) / name, dst / rel / name)


def write_pixels(arrays_path: Path, image_id: int, record: ImageRecord, arrays: dict | None = None) -> dict[str, str]:
    """Write one image's photo, label map and component map into the staged arrays.

    Each image is its own chunk, so workers may call this concurrently for different ids.
    The chunk files are fsynced here; returns their SHA-256 by path relative to the version
    directory, so the writer need not read them again at publication.
    """
    if arrays is None:
        arrays = _open_image_arrays(str(arrays_path))
    arrays["photos"][image_id] = record.photo
    arrays["labels"][image_id] = record.label
    arrays["components"][image_id] = record.segments.component_map
    out = {}
    for name, ndim in (("photos", 4), ("labels", 3), ("components", 3)):
        rel = f"{ARRAYS_DIR}/{name}/c/{image_id}" + "/0" * (ndim - 1)
        path = Path(arrays_path).parent / rel
        if path.is_file():  # zarr skips chunks equal to the fill value
            out[rel] = sync_and_hash(path)
    return out


@lru_cache(maxsize=4)
def _open_image_arrays(arrays_path: str) -> dict[str, zarr.Array]:
    group = zarr.open_group(arrays_path, mode="r+", zarr_format=3)
    return {name: group[name] for name in IMAGE_ARRAYS}
