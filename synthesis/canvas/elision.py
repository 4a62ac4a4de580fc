"""Boundary elision (paper §5.2): hide the seams of a composited canvas.

Pasted segments never fit their targets exactly, so the pixels near their boundaries are the
least trustworthy. Elision removes them the same way at training and at test time, so the
synthesis network learns to draw those parts itself:

- **white, inside**: of the canvas pixels within ``band * H`` of the boundary of the segment
  that supplied them, ``white_fraction`` (80%) become white (255, 255, 255), chosen at random.
  A segment's boundary is where the canvas's piece map changes: against another pasted
  segment or against missing pixels; the frame border is not a boundary.
- **black, outside objects**: every pixel within ``band * H`` outside an object of the layout
  (a component of an object class, see :mod:`synthesis.canvas.order_rule`) that is not itself
  an object pixel becomes black (0) and counts as missing. This is where shadows and contact
  regions lie, which a segment from another photo gets wrong.

Black wins over white. ``H`` is the frame height. Distances are Euclidean (OpenCV's exact
distance transform); "within d" means a distance below d for the inside band (boundary pixels
themselves at distance 0) and at most d for the outside band (the first outside pixel at 1).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import cv2
import numpy as np

#: Values of :attr:`Elided.code`.
KEPT, WHITE, BLACK = 0, 1, 2


@dataclass(frozen=True)
class ElisionConfig:
    """Boundary elision settings (paper §5.2 values by default).

    The paper's text says 0.05·h; its released code dilates edges with a square of side
    0.05·h, which reaches half as far. ``band`` follows the text.
    """

    band: float = 0.05  # fraction of the frame height
    white_fraction: float = 0.8
    black_outside_objects: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.band <= 1.0:
            raise ValueError(f"band must be in [0, 1], got {self.band}")
        if not 0.0 <= self.white_fraction <= 1.0:
            raise ValueError(f"white_fraction must be in [0, 1], got {self.white_fraction}")

    def with_overrides(self, band: float | None = None, rate: float | None = None) -> ElisionConfig:
        """A copy with the band and/or the white fraction replaced (None keeps the value)."""
        return ElisionConfig(
            band=self.band if band is None else float(band),
            white_fraction=self.white_fraction if rate is None else float(rate),
            black_outside_objects=self.black_outside_objects,
        )

    def radius(self, height: int) -> float:
        """The band width in pixels for a frame of ``height`` rows."""
        return self.band * height


#: The paper's elision (§5.2), which training canvases are simulated with by default.
PAPER_ELISION = ElisionConfig()
#: The test-time default of the pipeline, the worker and ``sims synthesize``/``sims eval``: no band.
#: Chosen by measurement on CamVid val (docs/synthesis.md): with the full-resolution blend, every
#: band costs fine detail and realism, and thin bands score well only through their speckle.
TEST_ELISION = ElisionConfig(band=0.0, white_fraction=0.8)


@dataclass(frozen=True)
class Elided:
    """An elided canvas: ``canvas`` (H, W, 3) uint8, ``missing`` (H, W) bool, ``code`` (H, W) uint8 per pixel."""

    canvas: np.ndarray
    missing: np.ndarray
    code: np.ndarray


def kept_pixels(missing: np.ndarray, code: np.ndarray) -> np.ndarray:
    """(H, W) bool: canvas pixels that are real, neither missing nor elided (the ones a blend may keep)."""
    return ~np.asarray(missing, bool) & (np.asarray(code) == KEPT)


def seams(pieces: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another piece (piece map, -1 = no piece)."""
    edge = np.zeros(pieces.shape, bool)
    dy = pieces[1:] != pieces[:-1]
    dx = pieces[:, 1:] != pieces[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def distance_to(target: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``True`` of ``target`` (inf if none)."""
    if not target.any():
        return np.full(target.shape, np.inf, np.float32)
    # OpenCV measures the distance to the nearest zero pixel.
    return cv2.distanceTransform((~target).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def inside_band(pieces: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: pixels of a piece within ``radius`` of that piece's boundary."""
    return (pieces >= 0) & (distance_to(seams(pieces)) < radius)


def outside_band(objects: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: non-object pixels within ``radius`` of an object pixel."""
    return ~objects & (distance_to(objects) <= radius)


def object_pixels(layout: np.ndarray, object_classes: Collection[int]) -> np.ndarray:
    """(H, W) bool: pixels of the layout whose class is an object class."""
    lut = np.zeros(256, bool)
    ids = np.asarray(sorted(object_classes), np.int64)
    lut[ids[(ids >= 0) & (ids < 255)]] = True
    return lut[layout]


def elide(
    canvas: np.ndarray,
    missing: np.ndarray,
    pieces: np.ndarray,
    layout: np.ndarray,
    object_classes: Collection[int],
    rng: np.random.Generator,
    config: ElisionConfig | None = None,
) -> Elided:
    """Apply boundary elision to a composited canvas; the inputs are not modified.

    Args:
        canvas: (H, W, 3) uint8.
        missing: (H, W) bool, True where no segment supplied a pixel.
        pieces: (H, W) integer map of which pasted segment supplied each pixel, -1 for none.
        layout: (H, W) uint8 label map (255 = unlabelled) that decides where objects are.
        object_classes: class ids whose components are objects (black band around them).
        rng: the source of the random choice of white pixels.
        config: band width and fractions.
    """
    config = config or ElisionConfig()
    h, w = pieces.shape
    if canvas.shape != (h, w, 3) or missing.shape != (h, w) or layout.shape != (h, w):
        raise ValueError(
            f"canvas {canvas.shape}, missing {missing.shape}, pieces {pieces.shape} and layout {layout.shape} "
            "must share one (H, W) frame"
        )
    radius = config.radius(h)
    out = canvas.copy()
    missing = missing.copy()
    code = np.zeros((h, w), np.uint8)
    # 1. White: an exact share of the band inside each piece's boundary.
    band = np.flatnonzero(inside_band(pieces, radius))
    chosen = band[rng.permutation(band.size)[: round(config.white_fraction * band.size)]]
    out.reshape(-1, 3)[chosen] = 255
    code.reshape(-1)[chosen] = WHITE
    # 2. Black: the band outside objects, wherever it falls; it counts as missing.
    if config.black_outside_objects and object_classes:
        black = outside_band(object_pixels(layout, object_classes), radius)
        out[black] = 0
        code[black] = BLACK
        missing |= black
    return Elided(out, missing, code)
