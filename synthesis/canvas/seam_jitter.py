"""Seam-aware training canvases: kept segments that do not quite match their neighbours.

At test time every segment of a canvas comes from a different photo, so neighbouring segments
differ in exposure, white balance and alignment: a patch of brighter road, a square of sky. A
canvas cut from the training photo itself has no such seams, so a network trained only on those
never learns to repair one. :class:`SeamJitter` gives a share of the kept segments of a simulated
canvas the appearance of another photo (paper §5.2's colour transfer does the same for 20% of
segments from a donor segment's statistics):

- **gamma** ``x ** g`` with ``log g`` uniform in ``±log(gamma)``;
- **white balance and exposure**: a gain per channel, ``exposure * balance_c``, each log-uniform;
- **misalignment**: the segment's content shifted by up to ``shift`` pixels (edge pixels repeat),
  still inside its own stencil.

Only pixels inside the segment's stencil change, and the target photo never does: the network
learns to pull the jittered pixels back to the photo wherever a pixel target exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SeamJitter:
    """How much a jittered segment may differ from its photo (see the module docstring).

    Attributes:
        probability: share of kept segments jittered.
        gamma: largest gamma factor (and its inverse).
        exposure: largest common gain (and its inverse).
        balance: largest per-channel gain on top of it (and its inverse).
        shift: largest shift of a segment's content, in pixels of the canvas.
    """

    probability: float = 0.5
    gamma: float = 1.35
    exposure: float = 1.3
    balance: float = 1.1
    shift: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"jitter probability must be in [0, 1], got {self.probability}")
        if min(self.gamma, self.exposure, self.balance) < 1.0 or self.shift < 0:
            raise ValueError(
                f"jitter gamma, exposure and balance must be >= 1 and shift >= 0, got "
                f"{self.gamma}, {self.exposure}, {self.balance}, {self.shift}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def draw(self, rng: np.random.Generator) -> JitterDraw | None:
        """One segment's jitter, or None for a segment left as it is.

        Every call takes the same numbers from ``rng``, so one segment's outcome does not shift the others'.
        """
        u = rng.random(8)
        if u[0] >= self.probability:
            return None

        def log_uniform(limit: float, v: float) -> float:
            return math.exp((2.0 * v - 1.0) * math.log(limit))

        gains = log_uniform(self.exposure, u[2]) * np.array([log_uniform(self.balance, v) for v in u[3:6]])
        dy, dx = (round((2.0 * v - 1.0) * self.shift) for v in u[6:8])
        return JitterDraw(gamma=log_uniform(self.gamma, u[1]), gains=tuple(float(g) for g in gains), shift=(dy, dx))


@dataclass(frozen=True)
class JitterDraw:
    """One segment's jitter: a gamma, a gain per channel and a shift (rows, cols)."""

    gamma: float
    gains: tuple[float, float, float]
    shift: tuple[int, int]

    def apply(self, photo: np.ndarray, stencil: np.ndarray) -> np.ndarray:
        """``photo`` (H, W, 3) uint8 with the pixels inside ``stencil`` (H, W) bool jittered; a new array."""
        out = photo.copy()
        ys, xs = np.nonzero(stencil)
        if ys.size == 0:
            return out
        h, w = stencil.shape
        dy, dx = self.shift
        source = photo[np.clip(ys - dy, 0, h - 1), np.clip(xs - dx, 0, w - 1)].astype(np.float32) / 255.0
        changed = (source**self.gamma) * np.asarray(self.gains, np.float32)
        out[ys, xs] = np.clip(np.rint(changed * 255.0), 0, 255).astype(np.uint8)
        return out
