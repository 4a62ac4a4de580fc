"""Coarsen a fine label map into a Cityscapes-coarse-like layout: the inputs of the layout refiner.

Cityscapes' coarse annotations are polygons drawn quickly inside objects: outlines are simplified,
they stop short of the true boundaries, small objects are skipped and whatever is not covered is
unlabelled. :func:`coarsen_layout` imitates this on a fine label map (uint8, 255 = unlabelled):

1. Regions. Every maximal 8-connected component of one class is a region.
2. Drops. Regions smaller than ``min_area`` become unlabelled; regions smaller than ``drop_area``
   become unlabelled with probability ``drop_prob``.
3. Erosion. Each kept region is eroded by its own random radius in ``erosion`` (a disc), as if the
   annotator traced it from the inside.
4. Polygons. The outlines of the eroded region (outer ones and holes) are simplified with
   Douglas-Peucker (``cv2.approxPolyDP``, tolerance ``simplify``) and filled.
5. Painting. Regions are painted on an all-unlabelled frame from the largest to the smallest, so a
   small object drawn inside a large one stays on top, as annotators draw it.
6. Gaps. A random number of discs (Poisson, mean ``gaps``) centred on class boundaries are set to
   unlabelled: the stretches of boundary an annotator did not bother to reach.

Strengths are fractions of the frame (heights for lengths, the frame for areas), so one config means
the same at any resolution. The result only ever differs from the fine map by unlabelled pixels or by
the label of a region less than :meth:`CoarsenConfig.max_shift` pixels away (step 4 moves outlines by
at most the simplification tolerance, plus one pixel of rasterisation). For a given seed the output is
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from memory_bank.classes import IGNORE
from memory_bank.errors import LayoutError
from synthesis.configs import JsonConfig


@dataclass(frozen=True)
class CoarsenConfig(JsonConfig):
    """Strengths of the coarsening (lengths as fractions of the frame height, areas of the frame).

    Attributes:
        erosion: (min, max) radius of each region's erosion; each region draws its own.
        min_area: regions below this share of the frame are always dropped.
        drop_area: regions below this share are dropped with probability ``drop_prob``.
        drop_prob: probability of dropping a region between ``min_area`` and ``drop_area``.
        simplify: Douglas-Peucker tolerance of the polygon outlines.
        gaps: mean number of unlabelled discs along class boundaries per image (Poisson).
        gap_radius: (min, max) radius of those discs.
    """

    erosion: tuple[float, float] = (0.004, 0.02)
    min_area: float = 0.0008
    drop_area: float = 0.006
    drop_prob: float = 0.5
    simplify: float = 0.012
    gaps: float = 6.0
    gap_radius: tuple[float, float] = (0.02, 0.06)

    def __post_init__(self) -> None:
        object.__setattr__(self, "erosion", tuple(float(v) for v in self.erosion))
        object.__setattr__(self, "gap_radius", tuple(float(v) for v in self.gap_radius))
        for name in ("erosion", "gap_radius"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a (min, max) range with 0 <= min <= max, got {(lo, hi)}")
        if not 0 <= self.min_area <= 1 or not 0 <= self.drop_area <= 1:
            raise ValueError("min_area and drop_area are shares of the frame, in [0, 1]")
        if not 0 <= self.drop_prob <= 1:
            raise ValueError(f"drop_prob must be in [0, 1], got {self.drop_prob}")
        if self.simplify < 0 or self.gaps < 0:
            raise ValueError("simplify and gaps must be non-negative")

    def max_shift(self, height: int) -> int:
        """Pixels (Chebyshev) by which a painted label can reach beyond its region at this frame height."""
        return math.ceil(self.simplify * height) + 2


@dataclass(frozen=True)
class _Region:
    class_id: int
    area: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)
    mask: np.ndarray  # bool, inside box


def _regions(fine: np.ndarray) -> list[_Region]:
    """8-connected components of every class, in class then component order (deterministic)."""
    out: list[_Region] = []
    for c in np.unique(fine):
        if c == IGNORE:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((fine == c).view(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[k])
            out.append(_Region(int(c), area, (y, x, y + h, x + w), comp[y : y + h, x : x + w] == k))
    return out


def _polygon_mask(
    mask: np.ndarray, radius: int, tolerance: float, frame_sides: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Erode a region mask by a disc of ``radius`` and fill its simplified outlines (holes kept).

    ``frame_sides`` (top, left, bottom, right) says which sides of the crop are the frame's edge:
    there the region is extended past the edge, so erosion does not pull it off the frame (an
    annotator's polygon runs to the image border).
    """
    pad = radius + 2
    m = np.pad(mask.astype(np.uint8), pad)
    top, left, bottom, right = frame_sides
    if left:
        m[:, :pad] = m[:, pad : pad + 1]
    if right:
        m[:, -pad:] = m[:, -pad - 1 : -pad]
    if top:
        m[:pad] = m[pad : pad + 1]
    if bottom:
        m[-pad:] = m[-pad - 1 : -pad]
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        m = cv2.erode(m, kernel)
    contours, _ = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    if contours:
        polys = [cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 else c for c in contours]
        # fillPoly fills by parity, so the holes (inner contours) stay unlabelled.
        cv2.fillPoly(out, polys, 1)
    return out[pad:-pad, pad:-pad].astype(bool)


def coarsen_layout(fine: np.ndarray, config: CoarsenConfig = CoarsenConfig(), seed: int = 0) -> np.ndarray:
    """A coarse version of ``fine`` (uint8 (H, W), 255 = unlabelled); same shape and dtype.

    See the module docstring for the steps. Deterministic for a given ``seed`` and config.
    """
    fine = np.asarray(fine)
    if fine.ndim != 2 or fine.dtype != np.uint8:
        raise LayoutError(f"a label map must be (H, W) uint8, got {fine.shape} {fine.dtype}")
    h, w = fine.shape
    rng = np.random.default_rng(seed)
    frame = h * w
    coarse = np.full_like(fine, IGNORE)

    # 1-2. Regions, and which of them an annotator would skip.
    regions = _regions(fine)
    kept: list[tuple[_Region, int]] = []
    for r in regions:
        drop_draw, radius_draw = rng.random(), rng.uniform(*config.erosion)
        if r.area < config.min_area * frame or (r.area < config.drop_area * frame and drop_draw < config.drop_prob):
            continue
        kept.append((r, round(radius_draw * h)))

    # 3-5. Eroded, simplified polygons painted largest first.
    tolerance = config.simplify * h
    for r, radius in sorted(kept, key=lambda t: -t[0].area):
        y0, x0, y1, x1 = r.box
        # Grow the box so that polygons may reach a little beyond the region (simplification).
        g = math.ceil(tolerance) + 1
        gy0, gx0, gy1, gx1 = max(0, y0 - g), max(0, x0 - g), min(h, y1 + g), min(w, x1 + g)
        crop = np.zeros((gy1 - gy0, gx1 - gx0), bool)
        crop[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0] = r.mask
        sides = (gy0 == 0, gx0 == 0, gy1 == h, gx1 == w)
        poly = _polygon_mask(crop, radius, tolerance, sides)
        coarse[gy0:gy1, gx0:gx1][poly] = r.class_id

    # 6. Unlabelled gaps along class boundaries.
    n_gaps = int(rng.poisson(config.gaps)) if config.gaps > 0 else 0
    if n_gaps:
        boundary = np.zeros((h, w), bool)
        boundary[:, 1:] |= fine[:, 1:] != fine[:, :-1]
        boundary[1:, :] |= fine[1:, :] != fine[:-1, :]
        ys, xs = np.nonzero(boundary)
        if ys.size:
            for i in rng.integers(0, ys.size, n_gaps):
                radius = max(1, round(rng.uniform(*config.gap_radius) * h))
                cv2.circle(coarse, (int(xs[i]), int(ys[i])), radius, IGNORE, thickness=-1)
    return coarse


def coarsen_batch(fines: np.ndarray, config: CoarsenConfig, seeds: np.ndarray) -> np.ndarray:
    """Coarsen each (H, W) map of an (N, H, W) stack with its own seed."""
    fines = np.asarray(fines)
    if fines.ndim != 3 or len(seeds) != len(fines):
        raise ValueError(f"expected (N, H, W) maps and N seeds, got {fines.shape} and {len(seeds)} seeds")
    return np.stack([coarsen_layout(f, config, int(s)) for f, s in zip(fines, seeds, strict=True)])


__all__ = ["CoarsenConfig", "coarsen_batch", "coarsen_layout"]
