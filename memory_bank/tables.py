"""Schemas of the bank's Parquet tables (``segments.parquet`` and ``images.parquet``)."""

from __future__ import annotations

import pyarrow as pa

SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.int32(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("local_index", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("context_box", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("area", pa.int32(), nullable=False),
        pa.field("centroid", pa.list_(pa.float32(), 2), nullable=False),
        pa.field("mask_popcount", pa.int32(), nullable=False),
        pa.field("context_popcount", pa.int32(), nullable=False),
        pa.field("coarse_popcount", pa.int32(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("instance_id", pa.int32(), nullable=False),
    ]
)

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int32(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("label_file", pa.string(), nullable=False),
        pa.field("source_height", pa.int32(), nullable=False),
        pa.field("source_width", pa.int32(), nullable=False),
        pa.field("num_segments", pa.int32(), nullable=False),
        pa.field("dropped_segments", pa.int32(), nullable=False),
        pa.field("dropped_area", pa.int64(), nullable=False),
    ]
)

SEGMENTS_FILE = "segments.parquet"
IMAGES_FILE = "images.parquet"
ARRAYS_DIR = "arrays.zarr"
FAISS_DIR = "faiss"


def faiss_index_name(class_id: int) -> str:
    """Relative path of the FAISS binary index of one class inside a version directory."""
    return f"{FAISS_DIR}/class_{class_id:03d}.faissbin"
