"""Class tables: the ids, names and colours a bank's label maps use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Label value for pixels that belong to no class (unlabelled, void, ignored).
IGNORE = 255


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class: its id in the bank's label maps, a name and an RGB colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "color": list(self.color)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassInfo:
        r, g, b = (int(c) for c in data["color"])
        return cls(id=int(data["id"]), name=str(data["name"]), color=(r, g, b))


@dataclass(frozen=True)
class ClassTable:
    """The classes of a bank. Ids are ``0..len-1``; :data:`IGNORE` (255) marks unlabelled pixels."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids[:10]}...")
        if len(ids) > IGNORE - 1:
            # 255 marks unlabelled pixels and retrieval reserves 254, so ids stop at 253.
            raise ValueError(f"at most {IGNORE - 1} classes are supported, got {len(ids)}")

    @classmethod
    def from_names(cls, names: Sequence[str], colors: Sequence[Sequence[int]] | None = None) -> ClassTable:
        """Build a table from names (ids follow their order) and optional RGB colours."""
        if colors is None:
            colors = default_palette(len(names))
        if len(colors) != len(names):
            raise ValueError(f"{len(names)} names but {len(colors)} colours")
        return cls(
            tuple(
                ClassInfo(i, n, (int(c[0]), int(c[1]), int(c[2])))
                for i, (n, c) in enumerate(zip(names, colors, strict=True))
            )
        )

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    def __getitem__(self, class_id: int) -> ClassInfo:
        return self.classes[class_id]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def palette(self) -> np.ndarray:
        """A (256, 3) uint8 lookup table from label value to colour; IGNORE and unused ids are black."""
        lut = np.zeros((256, 3), np.uint8)
        for c in self.classes:
            lut[c.id] = c.color
        return lut

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Render a label map as an RGB image."""
        return self.palette()[label]

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.classes]

    @classmethod
    def from_list(cls, items: Iterable[dict[str, Any]]) -> ClassTable:
        return cls(tuple(ClassInfo.from_dict(d) for d in items))


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for ``n`` classes (the PASCAL VOC bit-interleaving palette)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out
