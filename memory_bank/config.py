"""The parameters that define what a segment is and how it is coded.

They are fixed when a bank is built and stored in its manifest; queries must use the bank's
values, never their own, or scores stop being comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Grid = tuple[int, int]


@dataclass(frozen=True)
class SegmentConfig:
    """How label maps are cut into segments and how segments are coded.

    Attributes:
        connectivity: 4 or 8. Neighbourhood for connected components (8 joins diagonal
            touches, which keeps thin diagonal poles and wires in one piece).
        min_area: Components smaller than this many pixels, at working resolution, are
            dropped as label noise. The default 64 px is 0.04% of a 360x480 frame.
        context_scale: The context box is the bounding box scaled by this factor about its
            centre in each dimension (paper §4.1: enlarged by 25%), clipped to the frame.
        fine_grid: (rows, cols) of the grid at which masks and contexts are scored exactly.
        coarse_grids: (rows, cols) of each level of the binary codes used by FAISS: a pyramid
            of the fine mask bits OR-pooled to each grid. By default a half, a third and a fifth
            of the fine grid (23x30, 15x20 and 9x12 for 45x60): OR-pooling keeps small segments
            visible, the coarser levels break ties the finer ones leave, and the half level
            makes Hamming order follow mask IoU closely (docs/retrieval.md).
        instances: ``"none"``: every segment is a connected component of one class.
            ``"things"``: where an image or layout comes with an instance map, each instance of
            a thing class is one segment (:func:`~memory_bank.segments.extract_segments`).
        thing_classes: The bank class ids cut per instance when ``instances == "things"``.
    """

    connectivity: Literal[4, 8] = 8
    min_area: int = 64
    context_scale: float = 1.25
    fine_grid: Grid = (45, 60)
    coarse_grids: tuple[Grid, ...] | None = None
    instances: Literal["none", "things"] = "none"
    thing_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "thing_classes", tuple(sorted({int(c) for c in self.thing_classes})))
        if self.instances not in ("none", "things"):
            raise ValueError(f"instances must be 'none' or 'things', got {self.instances!r}")
        if self.instances == "things" and not self.thing_classes:
            raise ValueError("instances='things' needs at least one thing class")
        if any(not 0 <= c < 255 for c in self.thing_classes):
            raise ValueError(f"thing classes must be class ids 0..254, got {list(self.thing_classes)}")
        if self.coarse_grids is None:
            object.__setattr__(self, "coarse_grids", default_coarse_grids(self.fine_grid))
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")
        if self.context_scale < 1.0:
            raise ValueError(f"context_scale must be >= 1, got {self.context_scale}")
        for g in (self.fine_grid, *self.coarse_grids):
            if len(g) != 2 or min(g) < 1:
                raise ValueError(f"grids must be two positive ints, got {g}")
        if not self.coarse_grids:
            raise ValueError("coarse_grids needs at least one grid")
        for g in self.coarse_grids:
            if g[0] > self.fine_grid[0] or g[1] > self.fine_grid[1]:
                raise ValueError(f"coarse grid {g} is finer than the fine grid {self.fine_grid}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fine_grid"] = list(self.fine_grid)
        d["coarse_grids"] = [list(g) for g in self.coarse_grids]
        # Written only when on, so banks built without instances keep their manifests.
        if self.instances == "none":
            del d["instances"], d["thing_classes"]
        else:
            d["thing_classes"] = list(self.thing_classes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentConfig:
        return cls(
            connectivity=int(data["connectivity"]),  # type: ignore[arg-type]
            min_area=int(data["min_area"]),
            context_scale=float(data["context_scale"]),
            fine_grid=(int(data["fine_grid"][0]), int(data["fine_grid"][1])),
            coarse_grids=tuple((int(g[0]), int(g[1])) for g in data["coarse_grids"]),
            instances=data.get("instances", "none"),
            thing_classes=tuple(int(c) for c in data.get("thing_classes", ())),
        )


def default_coarse_grids(fine: Grid) -> tuple[Grid, ...]:
    """A half, a third and a fifth of the fine grid (45x60 -> 23x30, 15x20, 9x12).

    The half level was added for the banks of 10^6 segments and more: at 10^6 it puts the
    exact top-1 among the 256 nearest codes for 99.8% of components, against 98.8% with the
    third and fifth only (docs/retrieval.md, "The coarse code")."""
    return tuple((-(-fine[0] // d), -(-fine[1] // d)) for d in (2, 3, 5))


def parse_grids(text: str) -> tuple[Grid, ...]:
    """Parse ``"15x20,9x12"`` into ``((15, 20), (9, 12))``."""
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def format_grids(grids: tuple[Grid, ...]) -> str:
    """Inverse of :func:`parse_grids`."""
    return ",".join(f"{g[0]}x{g[1]}" for g in grids)


def parse_size(text: str) -> Grid:
    """Parse ``"360x480"`` (rows x cols) into ``(360, 480)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected ROWSxCOLS such as 360x480, got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return h, w
