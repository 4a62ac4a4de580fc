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
        coarse_grid: (rows, cols) of the grid of the short binary codes used by FAISS.
    """

    connectivity: Literal[4, 8] = 8
    min_area: int = 64
    context_scale: float = 1.25
    fine_grid: Grid = (45, 60)
    coarse_grid: Grid = (12, 16)

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")
        if self.context_scale < 1.0:
            raise ValueError(f"context_scale must be >= 1, got {self.context_scale}")
        for name in ("fine_grid", "coarse_grid"):
            g = getattr(self, name)
            if len(g) != 2 or min(g) < 1:
                raise ValueError(f"{name} must be two positive ints, got {g}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fine_grid"] = list(self.fine_grid)
        d["coarse_grid"] = list(self.coarse_grid)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentConfig:
        return cls(
            connectivity=int(data["connectivity"]),  # type: ignore[arg-type]
            min_area=int(data["min_area"]),
            context_scale=float(data["context_scale"]),
            fine_grid=(int(data["fine_grid"][0]), int(data["fine_grid"][1])),
            coarse_grid=(int(data["coarse_grid"][0]), int(data["coarse_grid"][1])),
        )


def parse_size(text: str) -> Grid:
    """Parse ``"360x480"`` (rows x cols) into ``(360, 480)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected ROWSxCOLS such as 360x480, got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return h, w
