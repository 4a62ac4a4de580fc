"""Schemas of the bank's Parquet tables (``segments.parquet`` and ``images.parquet``)."""

from __future__ import annotations

import pyarrow as pa


def _required(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    """A schema of the named columns in order, none nullable: the format has no missing values."""
    return pa.schema([pa.field(name, dtype, nullable=False) for name, dtype in columns])


SEGMENT_SCHEMA = _required(
    ("segment_id", pa.int64()),
    ("image_id", pa.int32()),
    ("class_id", pa.int16()),
    ("local_index", pa.int32()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("context_box", pa.list_(pa.int32(), 4)),
    ("area", pa.int32()),
    ("centroid", pa.list_(pa.float32(), 2)),
    ("mask_popcount", pa.int32()),
    ("context_popcount", pa.int32()),
    ("coarse_popcount", pa.int32()),
    ("source_file", pa.string()),
    ("split", pa.string()),
    ("instance_id", pa.int32()),
)

IMAGE_SCHEMA = _required(
    ("image_id", pa.int32()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("source_file", pa.string()),
    ("label_file", pa.string()),
    ("source_height", pa.int32()),
    ("source_width", pa.int32()),
    ("num_segments", pa.int32()),
    ("dropped_segments", pa.int32()),
    ("dropped_area", pa.int64()),
)

SEGMENTS_FILE = "segments.parquet"
IMAGES_FILE = "images.parquet"
ARRAYS_DIR = "arrays.zarr"
FAISS_DIR = "faiss"


def faiss_index_name(class_id: int) -> str:
    """Relative path of the FAISS binary index of one class inside a version directory."""
    return f"{FAISS_DIR}/class_{class_id:03d}.faissbin"
