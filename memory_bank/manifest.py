"""The manifest: one JSON file that says what a bank version holds and how to read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory_bank.atomic import read_json, write_json_atomic
from memory_bank.classes import IGNORE, ClassTable
from memory_bank.config import Grid, SegmentConfig
from memory_bank.errors import BankFormatError

#: The format new versions are written in; :data:`READABLE_FORMATS` are read.
FORMAT_VERSION = 2
#: 1: contexts as dense rows (``codes/context``); 2: contexts inside their grid boxes
#: (``codes/context_box`` + ``codes/context_cells``, see memory_bank/context_codes.py).
READABLE_FORMATS = (1, 2)
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SourceInfo:
    """A dataset that contributed images to a bank."""

    dataset: str
    root: str
    splits: tuple[str, ...]
    images: int
    #: The dataset's own label values that mean unlabelled and are not class ids (CamVid's 11), recorded
    #: so that layouts in raw dataset ids can be read (optional: banks built before it record none).
    unlabelled_ids: tuple[int, ...] = ()
    #: The sequence filter of the build (``--sequences`` / ``--exclude-sequences``; empty: none).
    sequences: tuple[str, ...] = ()
    exclude_sequences: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "dataset": self.dataset,
            "root": self.root,
            "splits": list(self.splits),
            "images": self.images,
        }
        if self.unlabelled_ids:
            d["unlabelled_ids"] = list(self.unlabelled_ids)
        if self.sequences:
            d["sequences"] = list(self.sequences)
        if self.exclude_sequences:
            d["exclude_sequences"] = list(self.exclude_sequences)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceInfo:
        ids = tuple(int(i) for i in d.get("unlabelled_ids", ()))
        return cls(
            str(d["dataset"]),
            str(d["root"]),
            tuple(d["splits"]),
            int(d["images"]),
            ids,
            tuple(d.get("sequences", ())),
            tuple(d.get("exclude_sequences", ())),
        )


@dataclass(frozen=True)
class Counts:
    """How many images and segments a bank holds, and how many the minimum area dropped."""

    images: int
    segments: int
    dropped_segments: int
    dropped_area: int
    segments_per_class: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["segments_per_class"] = list(self.segments_per_class)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(
            int(d["images"]),
            int(d["segments"]),
            int(d["dropped_segments"]),
            int(d["dropped_area"]),
            tuple(int(v) for v in d["segments_per_class"]),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything about a bank version except its data. Stored as ``manifest.json``."""

    bank_version: str
    created_at: str
    classes: ClassTable
    resolution: Grid
    segment_config: SegmentConfig
    counts: Counts
    sources: tuple[SourceInfo, ...]
    checksums: dict[str, str] = field(default_factory=dict)
    parent_version: str | None = None
    ignore_value: int = IGNORE
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        cfg = self.segment_config
        codes: dict[str, Any] = {
            "fine_mask_bits": cfg.fine_grid[0] * cfg.fine_grid[1],
            "coarse_bits": sum(g[0] * g[1] for g in cfg.coarse_grids),
            "bit_order": "big",
            "row_padding_bytes": 8,
        }
        if self.format_version >= 2:
            codes["context_layout"] = "boxed"
        return {
            "format_version": self.format_version,
            "bank_version": self.bank_version,
            "parent_version": self.parent_version,
            "created_at": self.created_at,
            "classes": self.classes.to_list(),
            "ignore_value": self.ignore_value,
            "resolution": list(self.resolution),
            "segments": cfg.to_dict(),
            "codes": codes,
            "counts": self.counts.to_dict(),
            "sources": [s.to_dict() for s in self.sources],
            "checksums": dict(sorted(self.checksums.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("format_version")
        if version not in READABLE_FORMATS or isinstance(version, bool):
            readable = " and ".join(str(v) for v in READABLE_FORMATS)
            raise BankFormatError(f"bank format version {version!r} is not supported (this SIMS reads {readable})")
        if d.get("ignore_value", IGNORE) != IGNORE:
            raise BankFormatError(
                f"manifest ignore_value {d['ignore_value']!r} is not {IGNORE}, the only one the format allows"
            )
        try:
            return cls(
                bank_version=str(d["bank_version"]),
                parent_version=d.get("parent_version"),
                created_at=str(d["created_at"]),
                classes=ClassTable.from_list(d["classes"]),
                ignore_value=int(d["ignore_value"]),
                resolution=(int(d["resolution"][0]), int(d["resolution"][1])),
                segment_config=SegmentConfig.from_dict(d["segments"]),
                counts=Counts.from_dict(d["counts"]),
                sources=tuple(SourceInfo.from_dict(s) for s in d["sources"]),
                checksums=dict(d.get("checksums", {})),
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BankFormatError(f"manifest is malformed: {e!r}") from e

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        return cls.from_dict(read_json(Path(directory) / MANIFEST_FILE, BankFormatError))
