"""SIMS memory bank: segments of real photos, their codes, and the on-disk bank format.

The verbs: :func:`open_bank` to read, :class:`BankWriter` to write a new version,
:func:`extract_segments` and :func:`encode_segments` to turn any label map (a dataset's or a
query's) into segments and codes.
"""

from memory_bank.classes import IGNORE, ClassInfo, ClassTable
from memory_bank.codes import SegmentCodes, encode_segments, popcount
from memory_bank.config import SegmentConfig
from memory_bank.errors import (
    BankBusyError,
    BankFormatError,
    BankNotFoundError,
    DatasetError,
    LayoutError,
    SimsError,
)
from memory_bank.manifest import FORMAT_VERSION, Manifest, SourceInfo
from memory_bank.reader import Bank, Segment, open_bank
from memory_bank.records import ImageRecord, make_record
from memory_bank.segments import Segments, extract_segments
from memory_bank.store import current_version, list_versions
from memory_bank.writer import BankWriter

__all__ = [
    "FORMAT_VERSION",
    "IGNORE",
    "Bank",
    "BankBusyError",
    "BankFormatError",
    "BankNotFoundError",
    "BankWriter",
    "ClassInfo",
    "ClassTable",
    "DatasetError",
    "ImageRecord",
    "LayoutError",
    "Manifest",
    "Segment",
    "SegmentCodes",
    "SegmentConfig",
    "Segments",
    "SimsError",
    "SourceInfo",
    "current_version",
    "encode_segments",
    "extract_segments",
    "list_versions",
    "make_record",
    "open_bank",
    "popcount",
]
