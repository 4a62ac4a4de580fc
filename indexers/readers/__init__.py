"""Dataset readers, created by name with :func:`create_reader`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from indexers.readers.ade20k import ADE20KReader
from indexers.readers.base import DatasetReader, Sample, SampleRef
from indexers.readers.camvid import CamVidReader
from indexers.readers.cityscapes import CityscapesReader
from indexers.readers.cocostuff import CocoStuffReader
from indexers.readers.folder import FolderReader
from memory_bank import DatasetError
from memory_bank.sequences import SequenceFilter

READERS: dict[str, type[DatasetReader]] = {
    CamVidReader.name: CamVidReader,
    CityscapesReader.name: CityscapesReader,
    ADE20KReader.name: ADE20KReader,
    CocoStuffReader.name: CocoStuffReader,
    FolderReader.name: FolderReader,
}


def create_reader(
    name: str, root: str | Path, splits: Sequence[str] | None = None, sequences: SequenceFilter | None = None
) -> DatasetReader:
    """Build the reader registered as ``name`` for the dataset at ``root`` (optionally filtered by sequence)."""
    try:
        cls = READERS[name.lower()]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}") from None
    return cls(root, splits, sequences)


__all__ = ["READERS", "DatasetReader", "Sample", "SampleRef", "create_reader"]
