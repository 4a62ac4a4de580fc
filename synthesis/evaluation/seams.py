"""What a canvas leaves visible: seams between sources, and detail where it had no pixels.

Two measures, each taken on the pixels a canvas singles out and relative to the real photo at
the same pixels (1.0 = as the real photo):

- **seam score**: the squared step between neighbouring pixels (4-neighbours) across a
  *seam* (:func:`synthesis.canvas.seams.seam_pairs`): both pixels have the same class, and
  they come from different sources, the bank photo a kept canvas pixel was retrieved from or
  "drawn by the network" (-1) for a pixel the canvas lacks. So a real sky segment meeting drawn
  sky counts, and two segments of one photo do not. Summed over a set, over the real photos'
  sum at the same pairs. A brightness step at a seam scores above 1.
- **hole detail**: the high-pass energy (the luminance minus its 2x area-downsampled and
  bilinearly upsampled copy: the band above half the Nyquist frequency, where
  :func:`~synthesis.evaluation.spectrum.high_frequency_fraction` measures fine detail) on the
  pixels the canvas lacks (missing or elided), over the real photo's at the same pixels. An
  upsampled low-resolution drawing scores near 0.

Rows without a canvas of their own (folders, parametric models, the real photos) are measured at
the pixels of the evaluation's SIMS canvas for the same layout, so every row is comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from synthesis.canvas.seams import seam_pairs, source_map
from synthesis.evaluation.spectrum import to_gray


@dataclass(frozen=True)
class CanvasRegions:
    """The pixels of one layout's canvas that the measures look at.

    Attributes:
        pairs: (N, 4) int rows ``(y0, x0, y1, x1)`` of 4-neighbours across a seam.
        holes: (H, W) bool, pixels the canvas lacks (missing or elided).
    """

    pairs: np.ndarray
    holes: np.ndarray

    @classmethod
    def from_canvas(
        cls, layout: np.ndarray, provenance: np.ndarray, image_of_segment: Mapping[int, int]
    ) -> CanvasRegions:
        """From a layout, a canvas's provenance map (bank segment id, -1 where none) and segment -> photo ids."""
        layout = np.asarray(layout)
        provenance = np.asarray(provenance, np.int64)
        if layout.shape != provenance.shape:
            raise ValueError(f"layout {layout.shape} and provenance {provenance.shape} differ in size")
        return cls(seam_pairs(layout, source_map(provenance, image_of_segment)), provenance < 0)


def step_energy(image: np.ndarray, pairs: np.ndarray) -> float:
    """Sum of squared RGB steps (0..1 scale) between the pixels of each pair."""
    if pairs.size == 0:
        return 0.0
    a = np.asarray(image, np.float64) / 255.0
    diff = a[pairs[:, 0], pairs[:, 1]] - a[pairs[:, 2], pairs[:, 3]]
    return float((diff**2).sum())


def high_pass(image: np.ndarray) -> np.ndarray:
    """Luminance minus its 2x area-downsampled, bilinearly upsampled copy (the top octave of detail)."""
    gray = to_gray(image).astype(np.float32)
    h, w = gray.shape
    low = cv2.resize(gray, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return gray - cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)


def hole_energy(image: np.ndarray, holes: np.ndarray) -> float:
    """Sum of the squared :func:`high_pass` of ``image`` over the ``holes`` pixels."""
    if not holes.any():
        return 0.0
    return float((high_pass(image)[holes].astype(np.float64) ** 2).sum())


@dataclass
class RunningRatio:
    """A running sum over a running sum; its :attr:`value` is NaN while the denominator is 0."""

    numerator: float = 0.0
    denominator: float = 0.0

    def add(self, numerator: float, denominator: float) -> None:
        """Add one term to each sum."""
        self.numerator += numerator
        self.denominator += denominator

    @property
    def value(self) -> float:
        """The ratio of the sums."""
        return self.numerator / self.denominator if self.denominator > 0 else float("nan")


@dataclass
class SeamTally:
    """Running sums of one image set against the real photos, at the regions of each layout's canvas."""

    seam: RunningRatio = field(default_factory=RunningRatio)
    hole: RunningRatio = field(default_factory=RunningRatio)
    hole_area: RunningRatio = field(default_factory=RunningRatio)

    def add(self, image: np.ndarray, photo: np.ndarray, regions: CanvasRegions) -> None:
        """Add one image and its real photo (same size as the canvas)."""
        if image.shape[:2] != regions.holes.shape or photo.shape[:2] != regions.holes.shape:
            raise ValueError(f"image {image.shape[:2]} and photo {photo.shape[:2]} must be {regions.holes.shape}")
        self.seam.add(step_energy(image, regions.pairs), step_energy(photo, regions.pairs))
        self.hole.add(hole_energy(image, regions.holes), hole_energy(photo, regions.holes))
        self.hole_area.add(int(regions.holes.sum()), regions.holes.size)

    @property
    def seam_score(self) -> float:
        """Seam step energy over the real photos' (NaN without seams)."""
        return self.seam.value

    @property
    def hole_detail(self) -> float:
        """High-pass energy in the holes over the real photos' (NaN without holes)."""
        return self.hole.value

    @property
    def hole_share(self) -> float:
        """Share of pixels the canvases lack."""
        return self.hole_area.value
