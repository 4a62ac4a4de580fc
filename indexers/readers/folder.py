"""A generic dataset: ``images/`` + ``labels/`` with matching stems and a class file in the root."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexers.readers.base import DatasetReader, SampleRef, identity_lut, paired_files
from memory_bank import ClassTable, DatasetError
from memory_bank.classes import IGNORE, ClassInfo, default_palette
from memory_bank.sequences import SequenceFilter

#: Photo file suffixes the folder reader pairs with ``<stem>.png`` label maps.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FolderReader(DatasetReader):
    """Any dataset laid out as ``images/`` + ``labels/`` with a class file in the root.

    Photos (``.png``, ``.jpg``, ``.jpeg``) pair with ``labels/<stem>.png``, whose values are
    class ids ``0..C-1`` or an ignore value. If ``images/`` holds split folders
    (``images/train/``, ``labels/train/``, ...) each is a split; the default split ``"all"``
    then means ``train`` if there is one (val is indexed only when asked for), else every split
    folder. Otherwise ``images/`` is read flat as the split ``"all"``.

    The class table comes from ``classes.json`` (preferred) or ``classes.csv``:

    * ``classes.json``: ``[{"id": 0, "name": "sky", "color": [r, g, b]}, ...]``, or
      ``{"classes": [...], "ignore": [0, ...]}`` to name extra raw values that mean unlabelled.
      ``color`` may be left out for a default palette colour.
    * ``classes.csv``: rows ``id,name,r,g,b``, with an optional header row.

    Ids must be ``0..C-1`` in order. Raw 255 is always unlabelled.
    """

    name = "folder"
    default_splits = ("all",)

    def __init__(
        self, root: str | Path, splits: Sequence[str] | None = None, sequences: SequenceFilter | None = None
    ) -> None:
        root = Path(root)
        if root.is_dir():  # otherwise the base class reports the missing directory
            self.classes, ignore = load_class_file(root)
            self.lut = identity_lut(len(self.classes), ignore=ignore)
        super().__init__(root, splits, sequences)

    def find_pairs(self) -> list[SampleRef]:
        images, labels = self.root / "images", self.root / "labels"
        if not images.is_dir():
            raise DatasetError(f"{self.name}: missing directory {images}")
        split_dirs = sorted(p.name for p in images.iterdir() if p.is_dir())
        if not split_dirs and self.splits == ("all",):
            return _pair_stems(images, labels, "all")
        if self.splits == ("all",):
            # Like the other readers, a bank indexes the training photos unless asked for more.
            self.splits = ("train",) if "train" in split_dirs else tuple(split_dirs)
        refs: list[SampleRef] = []
        for split in self.splits:
            refs += _pair_stems(images / split, labels / split, split)
        return refs


def _pair_stems(image_dir: Path, label_dir: Path, split: str) -> list[SampleRef]:
    """Pair each photo in ``image_dir`` with ``label_dir/<stem>.png``."""
    return paired_files(image_dir, label_dir, split, _photos, lambda rel: rel.with_suffix(".png"))


def _photos(image_dir: Path) -> list[Path]:
    """The photos in ``image_dir``, sorted; two with one stem are refused (one label map cannot tell them)."""
    photos = [p for p in sorted(image_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    seen: dict[str, Path] = {}
    for img in photos:
        if img.stem in seen:
            raise DatasetError(f"{seen[img.stem]} and {img} share the stem {img.stem!r}, so one label map cannot tell")
        seen[img.stem] = img
    return photos


def load_class_file(root: Path) -> tuple[ClassTable, tuple[int, ...]]:
    """Read ``root/classes.json`` or ``root/classes.csv``: the class table and the raw ignore values."""
    json_path, csv_path = root / "classes.json", root / "classes.csv"
    if json_path.is_file():
        path = json_path
        rows, ignore = _read_json(json_path)
    elif csv_path.is_file():
        path = csv_path
        rows, ignore = _read_csv(csv_path), []
    else:
        raise DatasetError(f"folder dataset {root} has no classes.json or classes.csv describing its classes")
    try:
        table = _build_table(rows)
        ignore_values = _check_ignore(ignore, len(table))
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed class table: {e}") from None
    return table, ignore_values


def _read_json(path: Path) -> tuple[list[Any], list[Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON: {e}") from None
    if isinstance(data, dict):
        rows, ignore = data.get("classes"), data.get("ignore", [])
    else:
        rows, ignore = data, []
    if not isinstance(rows, list) or not isinstance(ignore, list):
        raise DatasetError(f'{path}: expected a list of classes or {{"classes": [...], "ignore": [...]}}')
    return rows, ignore


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = [row for row in csv.reader(f) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a readable CSV file: {e}") from None
    if lines and not lines[0][0].strip().lstrip("-").isdigit():
        lines = lines[1:]  # header row
    rows = []
    for n, line in enumerate(lines, 1):
        if len(line) != 5:
            raise DatasetError(f"{path}: row {n} has {len(line)} fields, expected id,name,r,g,b")
        rows.append({"id": line[0].strip(), "name": line[1].strip(), "color": [c.strip() for c in line[2:]]})
    return rows


def _build_table(rows: list[Any]) -> ClassTable:
    if not rows:
        raise ValueError("no classes")
    if len(rows) >= IGNORE:
        raise ValueError(f"{len(rows)} classes, at most {IGNORE - 1} fit next to the ignore value {IGNORE}")
    palette = default_palette(len(rows))
    infos = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"class entry {i} is {row!r}, not an object with id, name and color")
        if "id" not in row or "name" not in row:
            raise ValueError(f"class entry {i} ({row!r}) needs both 'id' and 'name'")
        class_id = int(row["id"])
        if class_id != i:
            raise ValueError(f"class ids must be 0..{len(rows) - 1} in order; entry {i} has id {class_id}")
        name = row["name"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class {i} has no name")
        color = row.get("color", palette[i])
        if isinstance(color, str) or len(color) != 3:
            raise ValueError(f"class {i} ({name}) colour {color!r} is not [r, g, b]")
        rgb = tuple(int(c) for c in color)
        if not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"class {i} ({name}) colour {color!r} is outside 0..255")
        infos.append(ClassInfo(i, name.strip(), rgb))
    return ClassTable(tuple(infos))


def _check_ignore(values: list[Any], num_classes: int) -> tuple[int, ...]:
    out = {IGNORE}
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not num_classes <= v <= IGNORE:
            raise ValueError(f"ignore value {v!r} must be an integer in {num_classes}..{IGNORE} (not a class id)")
        out.add(v)
    return tuple(sorted(out))
