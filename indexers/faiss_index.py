"""FAISS binary indexes of coarse codes, one per class, stored inside a bank version."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from memory_bank.tables import faiss_index_name

log = logging.getLogger(__name__)


def build_class_index(coarse: np.ndarray, ids: np.ndarray) -> faiss.IndexBinary:
    """An exact Hamming index over ``coarse`` (n, bytes) uint8 codes, labelled with ``ids``."""
    if coarse.ndim != 2 or coarse.dtype != np.uint8:
        raise ValueError(f"coarse codes must be (n, bytes) uint8, got {coarse.shape} {coarse.dtype}")
    index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(coarse.shape[1] * 8))
    index.add_with_ids(np.ascontiguousarray(coarse), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def write_class_indexes(version_dir: Path, coarse: np.ndarray, class_id: np.ndarray, num_classes: int) -> int:
    """Write ``faiss/class_NNN.faissbin`` for every class that has segments; returns how many."""
    written = 0
    for c in range(num_classes):
        ids = np.flatnonzero(class_id == c)
        if ids.size == 0:
            continue
        path = Path(version_dir) / faiss_index_name(c)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index_binary(build_class_index(coarse[ids], ids), str(path))
        written += 1
    log.info("wrote %d FAISS binary indexes (%d codes of %d bits)", written, len(class_id), coarse.shape[1] * 8)
    return written


def read_class_index(path: Path) -> faiss.IndexBinary:
    """Load a class index written by :func:`write_class_indexes`."""
    return faiss.read_index_binary(str(path))
